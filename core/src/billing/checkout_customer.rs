//! Which Stripe customer a checkout reuses (pure).
//!
//! A checkout reuses its dashboard user's customer, so re-subscribing revives the same Tenant and
//! paying twice meets `BillingConflict` instead of making a second, empty stack. The customer is
//! found, in this order:
//!
//! 1. by the dashboard's `client_reference_id`, recorded with the customer when an earlier
//!    checkout of the same dashboard completed;
//! 2. only when the dashboard asserts the address is verified, by e-mail among Stripe's
//!    customers the caller may reuse (a dashboard: those its own checkouts made). Without that
//!    assertion a stranger typing a victim's address would attach a subscription to the victim's
//!    customer and govern the victim's tenant;
//! 3. none: Stripe makes a new customer from the session's `customer_email`.
//!
//! Several customers with one address (Stripe allows it): the oldest, then the smallest id, so
//! every checkout of that address lands on the same one.

use super::parse::CustomerObservation;

/// Where a checkout's customer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerChoice {
    /// The customer recorded with the dashboard user's earlier checkout.
    ByReference(String),
    /// The oldest reusable customer with the verified address.
    ByVerifiedEmail(String),
    /// None found: Stripe makes one.
    New,
}

impl CustomerChoice {
    /// The customer the session names, if any.
    pub fn customer(&self) -> Option<&str> {
        match self {
            CustomerChoice::ByReference(c) | CustomerChoice::ByVerifiedEmail(c) => Some(c),
            CustomerChoice::New => None,
        }
    }

    /// A short stable label: a log field and the audit detail.
    pub fn label(&self) -> &'static str {
        match self {
            CustomerChoice::ByReference(_) => "client_reference_id",
            CustomerChoice::ByVerifiedEmail(_) => "verified_email",
            CustomerChoice::New => "new",
        }
    }
}

/// Whether the e-mail lookup may run at all: only for an address the dashboard verified, and
/// only when the reference found nothing.
pub fn email_lookup_allowed(by_reference: Option<&str>, email_verified: bool) -> bool {
    by_reference.is_none() && email_verified
}

/// The choice from what was found: `by_reference` (step 1) wins; else, when the address is
/// verified, the oldest of `by_email` that `reusable` allows; else a new customer.
pub fn choose(
    by_reference: Option<String>,
    email_verified: bool,
    by_email: &[CustomerObservation],
    reusable: impl Fn(&str) -> bool,
) -> CustomerChoice {
    if let Some(customer) = by_reference {
        return CustomerChoice::ByReference(customer);
    }
    if !email_verified {
        return CustomerChoice::New;
    }
    by_email
        .iter()
        .filter(|c| reusable(&c.id))
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)))
        .map_or(CustomerChoice::New, |c| {
            CustomerChoice::ByVerifiedEmail(c.id.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cus(id: &str, created: i64) -> CustomerObservation {
        CustomerObservation {
            id: id.to_owned(),
            created,
        }
    }

    #[test]
    fn the_reference_wins_over_any_email() {
        let found = [cus("cus_email", 1)];
        assert_eq!(
            choose(Some("cus_ref".into()), true, &found, |_| true),
            CustomerChoice::ByReference("cus_ref".into())
        );
        assert!(!email_lookup_allowed(Some("cus_ref"), true));
    }

    #[test]
    fn an_unverified_email_never_attaches() {
        let found = [cus("cus_victim", 1)];
        assert_eq!(choose(None, false, &found, |_| true), CustomerChoice::New);
        assert!(!email_lookup_allowed(None, false));
        assert!(email_lookup_allowed(None, true));
    }

    #[test]
    fn a_verified_email_reuses_the_oldest_reusable_customer() {
        let found = [
            cus("cus_b", 20),
            cus("cus_young", 30),
            cus("cus_a", 20),
            cus("cus_other", 5),
        ];
        // cus_other is older but not the caller's to reuse; cus_a and cus_b tie: smallest id.
        let choice = choose(None, true, &found, |c| c != "cus_other");
        assert_eq!(choice, CustomerChoice::ByVerifiedEmail("cus_a".into()));
        assert_eq!(choice.customer(), Some("cus_a"));
        assert_eq!(choice.label(), "verified_email");
    }

    #[test]
    fn nothing_found_makes_a_new_customer() {
        assert_eq!(choose(None, true, &[], |_| true), CustomerChoice::New);
        let found = [cus("cus_other", 1)];
        let choice = choose(None, true, &found, |_| false);
        assert_eq!(choice, CustomerChoice::New);
        assert_eq!(choice.customer(), None);
    }
}
