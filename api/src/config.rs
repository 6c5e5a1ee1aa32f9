//! Configuration checks made at start-up: required secrets must be set and must not be
//! placeholders left over from a template.

/// A required secret that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set: it is required")]
    Missing(&'static str),
    #[error("{0} is empty: it is required")]
    Empty(&'static str),
    #[error("{0} holds a placeholder value, not a real secret")]
    Placeholder(&'static str),
}

impl ConfigError {
    /// A short stable category, for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ConfigError::Missing(_) => "missing",
            ConfigError::Empty(_) => "empty",
            ConfigError::Placeholder(_) => "placeholder",
        }
    }
}

/// Whether `value` looks like a template placeholder (`PLACEHOLDER…`, `changeme`, `your-…`).
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    v.starts_with("placeholder")
        || v == "changeme"
        || v == "change-me"
        || v.starts_with("your-")
        || v.starts_with("your_")
        || v.starts_with("<your")
}

/// The secret in `value` for the variable `name`, refused when missing, empty or a placeholder.
pub fn required_secret(name: &'static str, value: Option<&str>) -> Result<String, ConfigError> {
    let value = value.ok_or(ConfigError::Missing(name))?.trim();
    if value.is_empty() {
        return Err(ConfigError::Empty(name));
    }
    if is_placeholder(value) {
        return Err(ConfigError::Placeholder(name));
    }
    Ok(value.to_owned())
}

/// The comma-separated list of secrets in `value` for `name` (e.g. `STRIPE_WEBHOOK_SECRETS`):
/// at least one, and none of them empty or a placeholder.
pub fn required_secret_list(
    name: &'static str,
    value: Option<&str>,
) -> Result<Vec<String>, ConfigError> {
    let value = value.ok_or(ConfigError::Missing(name))?;
    let secrets: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return Err(ConfigError::Empty(name));
    }
    if secrets.iter().any(|s| is_placeholder(s)) {
        return Err(ConfigError::Placeholder(name));
    }
    Ok(secrets.into_iter().map(str::to_owned).collect())
}

/// The secrets the API needs, checked.
#[derive(Clone)]
pub struct Secrets {
    pub webhook_secrets: Vec<String>,
    pub stripe_secret_key: String,
    pub admin_token: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Checks the three required secrets; the first unusable one is named in the error.
    pub fn from_values(
        webhook_secrets: Option<&str>,
        stripe_secret_key: Option<&str>,
        admin_token: Option<&str>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            webhook_secrets: required_secret_list("STRIPE_WEBHOOK_SECRETS", webhook_secrets)?,
            stripe_secret_key: required_secret("STRIPE_SECRET_KEY", stripe_secret_key)?,
            admin_token: required_secret("STACKPLANE_ADMIN_TOKEN", admin_token)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Option<&str> = Some("sk_test_51Hx");

    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        &'a str,
    );

    #[test]
    fn good_secrets_are_accepted_and_lists_split() {
        let s = Secrets::from_values(Some("whsec_a, whsec_b"), OK, Some("tok")).unwrap();
        assert_eq!(s.webhook_secrets, vec!["whsec_a", "whsec_b"]);
        assert_eq!(s.stripe_secret_key, "sk_test_51Hx");
        assert!(!format!("{s:?}").contains("sk_test"), "Debug hides secrets");
    }

    #[test]
    fn missing_empty_and_placeholder_secrets_name_the_variable() {
        let cases: [Case; 9] = [
            (None, OK, OK, "STRIPE_WEBHOOK_SECRETS", "missing"),
            (Some(" , "), OK, OK, "STRIPE_WEBHOOK_SECRETS", "empty"),
            (
                Some("whsec_a,PLACEHOLDER_SECRET"),
                OK,
                OK,
                "STRIPE_WEBHOOK_SECRETS",
                "placeholder",
            ),
            (Some("whsec_a"), None, OK, "STRIPE_SECRET_KEY", "missing"),
            (Some("whsec_a"), Some(""), OK, "STRIPE_SECRET_KEY", "empty"),
            (
                Some("whsec_a"),
                Some("changeme"),
                OK,
                "STRIPE_SECRET_KEY",
                "placeholder",
            ),
            (
                Some("whsec_a"),
                OK,
                None,
                "STACKPLANE_ADMIN_TOKEN",
                "missing",
            ),
            (
                Some("whsec_a"),
                OK,
                Some("  "),
                "STACKPLANE_ADMIN_TOKEN",
                "empty",
            ),
            (
                Some("whsec_a"),
                OK,
                Some("your-admin-token"),
                "STACKPLANE_ADMIN_TOKEN",
                "placeholder",
            ),
        ];
        for (w, k, a, var, label) in cases {
            let err = Secrets::from_values(w, k, a).unwrap_err();
            assert!(err.to_string().contains(var), "{err} should name {var}");
            assert_eq!(err.metric_label(), label, "{err}");
        }
    }
}
