//! Each tenant's status view as `GET /api/v1/tenants/{name}` answers it: the JSON body,
//! rendered once per version of the Tenant and then served as shared bytes. Dashboards poll
//! this endpoint; between two writes of a Tenant every answer is the same, and building the
//! view (a copy of every string of the status) and serializing it was most of the handler's
//! work (profiled under `status_load`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use stackplane_crds::Tenant;

use super::status::TenantView;

/// Rendered bodies by tenant name, each with the resourceVersion it was rendered from (one
/// memo, shared by the clones of the API state).
#[derive(Debug, Default, Clone)]
pub struct RenderedViews {
    bodies: Arc<RwLock<HashMap<String, Rendered>>>,
}

#[derive(Debug)]
struct Rendered {
    resource_version: String,
    body: Bytes,
}

impl RenderedViews {
    /// The body of `tenant`'s view, rendered now unless this version of it already was.
    /// `cached` counts the tenants in the cache, asked only when a render is kept: bodies of
    /// tenants deleted since are dropped once the renders outnumber the cache twice (and 64),
    /// so this never grows past that.
    pub fn body(
        &self,
        tenant: &Tenant,
        cached: impl FnOnce() -> usize,
    ) -> serde_json::Result<Bytes> {
        let name = tenant.metadata.name.as_deref().unwrap_or_default();
        // The resourceVersion changes with every write of the object, and a new object of the
        // same name has a new one too. Without one (never from the API server) nothing is kept.
        let Some(version) = tenant.metadata.resource_version.as_deref() else {
            return render(tenant);
        };
        if let Ok(bodies) = self.bodies.read() {
            if let Some(r) = bodies.get(name).filter(|r| r.resource_version == version) {
                return Ok(r.body.clone());
            }
        }
        let body = render(tenant)?;
        if let Ok(mut bodies) = self.bodies.write() {
            if bodies.len() >= 2 * cached().max(64) {
                bodies.clear();
            }
            bodies.insert(
                name.to_owned(),
                Rendered {
                    resource_version: version.to_owned(),
                    body: body.clone(),
                },
            );
        }
        Ok(body)
    }

    /// Bodies kept (for tests).
    pub fn len(&self) -> usize {
        self.bodies.read().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn render(tenant: &Tenant) -> serde_json::Result<Bytes> {
    serde_json::to_vec(&TenantView::of(tenant)).map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::{TenantPhase, TenantSpec, TenantStatus};

    fn tenant(name: &str, rv: &str, phase: TenantPhase) -> Tenant {
        let mut t = Tenant::new(name, TenantSpec::new("p", "starter"));
        t.metadata.resource_version = Some(rv.into());
        t.status = Some(TenantStatus {
            phase: Some(phase),
            ..TenantStatus::default()
        });
        t
    }

    fn phase_of(body: &Bytes) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["phase"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_body_is_the_view_of_the_version_asked_for() {
        let views = RenderedViews::default();
        let v1 = tenant("a", "1", TenantPhase::Provisioning);
        let first = views.body(&v1, || 1).unwrap();
        assert_eq!(first, render(&v1).unwrap());
        assert_eq!(phase_of(&first), "Provisioning");
        // The same version again: the same bytes, not a new render.
        let again = views.body(&v1, || 1).unwrap();
        assert_eq!(again.as_ptr(), first.as_ptr());
        // A newer version is rendered anew, never answered from the older one.
        let v2 = tenant("a", "2", TenantPhase::Ready);
        assert_eq!(phase_of(&views.body(&v2, || 1).unwrap()), "Ready");
        assert_eq!(views.len(), 1);
    }

    #[test]
    fn renders_of_deleted_tenants_do_not_accumulate() {
        let views = RenderedViews::default();
        for i in 0..1000 {
            let t = tenant(&format!("t{i}"), "1", TenantPhase::Ready);
            views.body(&t, || 10).unwrap();
            assert!(
                views.len() <= 128,
                "{} bodies kept for a cache of 10",
                views.len()
            );
        }
    }

    #[test]
    fn without_a_resource_version_nothing_is_kept() {
        let views = RenderedViews::default();
        let mut t = tenant("a", "1", TenantPhase::Ready);
        t.metadata.resource_version = None;
        assert_eq!(phase_of(&views.body(&t, || 1).unwrap()), "Ready");
        assert!(views.is_empty());
    }
}
