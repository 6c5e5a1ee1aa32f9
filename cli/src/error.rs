//! What can go wrong, each with what to do about it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot load a kubeconfig ({0}); set KUBECONFIG, pass --kubeconfig, or run inside a cluster")]
    NoKubeconfig(String),
    #[error("the stackplane CRDs are not installed in this cluster: `kubectl apply -f crds/` or install the Helm chart")]
    CrdsMissing,
    #[error("no Tenant named {0:?}: `kubectl get tenants` lists them")]
    TenantNotFound(String),
    #[error("no Platform named {0:?}: `kubectl get platforms` lists them")]
    PlatformNotFound(String),
    #[error("no TenantBackup named {0:?}: `kubectl stackplane status <tenant>` lists a tenant's backups")]
    BackupNotFound(String),
    #[error("{backup:?} is a backup of {of:?}, not of {tenant:?}")]
    BackupOfAnotherTenant {
        backup: String,
        of: String,
        tenant: String,
    },
    #[error("{0}")]
    BadArgument(String),
    #[error("no namespace {0:?}, nor one of a tenant of that name: `kubectl get namespaces -l stackplane.io/orphaned=true` lists those waiting to be adopted")]
    NamespaceNotFound(String),
    #[error("cannot adopt: {0}")]
    NotAdoptable(#[from] stackplane_core::tenant::adoption::AdoptError),
    #[error("Tenant {0:?} exists already: it adopts its namespace by itself")]
    TenantExists(String),
    #[error("the tenant cannot be planned: {0}")]
    Invalid(String),
    #[error("the API address is not set: pass --api-url or set STACKPLANE_API_URL (the api's public listener)")]
    ApiUrlMissing,
    #[error(
        "the API token is not set: pass --token or set STACKPLANE_API_TOKEN (the admin token)"
    )]
    ApiTokenMissing,
    #[error("the API answered {status}: {body}")]
    Api { status: u16, body: String },
    #[error("cannot reach the API: {0}")]
    ApiUnreachable(#[from] reqwest::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("server-side apply dry run of {kind} {name}: {source}")]
    DryRun {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl CliError {
    /// The process exit code: 2 for what the user can fix by asking differently, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::TenantNotFound(_)
            | CliError::PlatformNotFound(_)
            | CliError::BackupNotFound(_)
            | CliError::BackupOfAnotherTenant { .. }
            | CliError::BadArgument(_)
            | CliError::NamespaceNotFound(_)
            | CliError::NotAdoptable(_)
            | CliError::TenantExists(_)
            | CliError::ApiUrlMissing
            | CliError::ApiTokenMissing => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// A 404 from reading object `name`: the object is missing, or (when the answer does not name
/// the object) the resource type itself is not served, i.e. the CRDs are not installed.
pub fn not_found(error: kube::Error, name: &str, missing: impl FnOnce() -> CliError) -> CliError {
    match &error {
        kube::Error::Api(status) if status.code == 404 => {
            if status.message.contains(&format!("\"{name}\"")) {
                missing()
            } else {
                CliError::CrdsMissing
            }
        }
        _ => CliError::Kube(error),
    }
}
