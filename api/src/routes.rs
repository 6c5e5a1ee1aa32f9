//! A router that remembers what it routes, so a test can compare the routes served with the
//! OpenAPI document (every route documented, every documented route served).

use axum::handler::Handler;
use axum::routing::{delete, get, post, put};
use axum::Router;

/// A router of state `S` and the (method, path) of every route added to it.
pub struct RouteTable<S> {
    router: Router<S>,
    routes: Vec<(&'static str, &'static str)>,
}

impl<S: Clone + Send + Sync + 'static> Default for RouteTable<S> {
    fn default() -> Self {
        Self {
            router: Router::new(),
            routes: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> RouteTable<S> {
    pub fn get<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.router = self.router.route(path, get(handler));
        self.routes.push(("get", path));
        self
    }

    pub fn post<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.router = self.router.route(path, post(handler));
        self.routes.push(("post", path));
        self
    }

    pub fn put<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.router = self.router.route(path, put(handler));
        self.routes.push(("put", path));
        self
    }

    pub fn delete<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.router = self.router.route(path, delete(handler));
        self.routes.push(("delete", path));
        self
    }

    /// Applies `f` to the router (layers, body limits of single routes).
    pub fn map(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// The router with its state, and the routes it serves.
    pub fn finish(self, state: S) -> (Router, Vec<(&'static str, &'static str)>) {
        (self.router.with_state(state), self.routes)
    }
}
