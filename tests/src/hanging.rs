//! A TCP peer that accepts every connection and never answers: what a hung Stripe API (or a
//! load balancer in front of a dead one) looks like to a client. It counts the connections it
//! accepted (each one HTTP request: a hung connection is never reused) and holds them open until
//! [`HangingPeer::close_all`] or the peer is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// The peer; listening until dropped.
pub struct HangingPeer {
    /// `http://127.0.0.1:PORT`, to use as an API base.
    pub url: String,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingPeer {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hanging peer");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (accepted, held) = (accepted.clone(), held.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    held.lock().expect("held connections").push(stream);
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Self {
            url,
            accepted,
            held,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every connection held (their clients see the connection end without an answer).
    pub fn close_all(&self) {
        self.held.lock().expect("held connections").clear();
    }
}

impl Drop for HangingPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
