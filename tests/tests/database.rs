//! The migrations against a real Postgres.

use serde_json::json;
use stackplane_api::db::MIGRATOR;
use stackplane_tests::fresh_database;

const TABLES: [&str; 11] = [
    "api_tokens",
    "audit_log",
    "backup_records",
    "billing_resync",
    "billing_tenants",
    "checkout_customers",
    "platform_prices",
    "stripe_events",
    "subscription_state",
    "tenant_daily_usage",
    "tenant_status_history",
];

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '\\_sqlx%' ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("list tables")
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_a_second_run_is_a_no_op() {
    let (pool, _) = fresh_database().await;
    assert!(
        tables(&pool).await.is_empty(),
        "a fresh database has no tables"
    );

    MIGRATOR.run(&pool).await.expect("first migration run");
    assert_eq!(tables(&pool).await, TABLES);
    let applied: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, installed_on::text FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .expect("read migration history");
    assert_eq!(applied.len(), MIGRATOR.iter().count());

    MIGRATOR.run(&pool).await.expect("second migration run");
    let again: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, installed_on::text FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .expect("read migration history");
    assert_eq!(applied, again, "a second run applies nothing");
}

#[tokio::test]
async fn a_stripe_event_is_stored_once_however_often_it_arrives() {
    let (pool, _) = fresh_database().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let insert = "INSERT INTO stripe_events (id, event_type, created, payload) \
                  VALUES ($1, 'customer.subscription.created', now(), '{}'::jsonb) \
                  ON CONFLICT (id) DO NOTHING";
    let first = sqlx::query(insert)
        .bind("evt_1")
        .execute(&pool)
        .await
        .expect("insert");
    let second = sqlx::query(insert)
        .bind("evt_1")
        .execute(&pool)
        .await
        .expect("insert again");
    assert_eq!((first.rows_affected(), second.rows_affected()), (1, 0));
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM stripe_events WHERE id = 'evt_1'")
            .fetch_one(&pool)
            .await
            .expect("read event");
    assert_eq!((state.as_str(), attempts), ("pending", 0));
}

#[tokio::test]
async fn schema_refuses_inconsistent_rows() {
    let (pool, _) = fresh_database().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let tenant_token_without_tenant = sqlx::query(
        "INSERT INTO api_tokens (token_hash, prefix, scope, created_by) VALUES ($1, 'sp_abc', 'tenant', 'admin')",
    )
    .bind(vec![0u8; 32])
    .execute(&pool)
    .await;
    let err = tenant_token_without_tenant.expect_err("a tenant token needs a tenant");
    assert!(err.to_string().contains("check constraint"), "{err}");
    // A dashboard token names no tenant; no scope but the known ones is stored.
    let token = |scope: &'static str, tenant: Option<&'static str>, byte: u8| {
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, prefix, scope, tenant, created_by) VALUES ($1, 'spd_abc', $2, $3, 'admin')",
        )
        .bind(vec![byte; 32])
        .bind(scope)
        .bind(tenant)
        .execute(&pool)
    };
    token("dashboard", None, 1)
        .await
        .expect("a dashboard token");
    for (scope, tenant, byte) in [("dashboard", Some("t"), 2), ("owner", None, 3)] {
        let err = token(scope, tenant, byte).await.expect_err("refused");
        assert!(
            err.to_string().contains("check constraint"),
            "{scope}: {err}"
        );
    }

    let bad_state = sqlx::query(
        "INSERT INTO stripe_events (id, event_type, created, payload, state) VALUES ('evt_x', 't', now(), '{}', 'lost')",
    )
    .execute(&pool)
    .await;
    assert!(bad_state
        .expect_err("unknown state")
        .to_string()
        .contains("check constraint"));
}

/// A database that ran only the migrations before billing truth, holding subscriptions of the
/// old model (several per tenant), is migrated to the governing-subscription rule: every row
/// learns its platform and creation time, and each Tenant is governed by the newest live
/// subscription, or, if all ended, by the one that ended last.
#[tokio::test]
async fn existing_subscription_rows_are_migrated_to_the_governing_subscription() {
    let (pool, _) = fresh_database().await;
    // The migrations as they were before billing truth: the first two files, from a copy of the
    // directory (same contents, same checksums as the embedded ones).
    let dir = std::env::temp_dir().join(stackplane_tests::unique("migrations-before"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files: Vec<_> =
        std::fs::read_dir(stackplane_tests::workspace_root().join("migrations"))
            .expect("migrations dir")
            .map(|e| e.expect("entry").path())
            .collect();
    files.sort();
    for f in &files[..2] {
        std::fs::copy(f, dir.join(f.file_name().expect("name"))).expect("copy migration");
    }
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .expect("read the older migrations")
        .run(&pool)
        .await
        .expect("older migrations");

    let t0: i64 = 1_760_000_000;
    // (event, subscription, created)
    let events = [
        ("evt_a_created", "sub_a_old", t0),
        ("evt_a_deleted", "sub_a_old", t0 + 50),
        ("evt_b_created", "sub_b_new", t0 + 100),
        ("evt_c1", "sub_c1", t0),
        ("evt_c2", "sub_c2", t0 + 10),
    ];
    for (id, sub, created) in events {
        sqlx::query(
            "INSERT INTO stripe_events (id, event_type, created, subscription_id, payload, state) \
             VALUES ($1, 'customer.subscription.updated', to_timestamp($2), $3, '{}', 'applied')",
        )
        .bind(id)
        .bind(created as f64)
        .bind(sub)
        .execute(&pool)
        .await
        .expect("insert event");
    }
    // Tenant one: an old, cancelled subscription and the new, active one (re-subscribed).
    // Tenant two: both cancelled, c1 last.
    let rows = [
        (
            "sub_a_old",
            "leadsite-io-cus1",
            "cus1",
            "canceled",
            "evt_a_deleted",
            json!({"platform": "leadsite-io", "cancelled_at": t0 + 50}),
        ),
        (
            "sub_b_new",
            "leadsite-io-cus1",
            "cus1",
            "active",
            "evt_b_created",
            json!({"platform": "leadsite-io"}),
        ),
        (
            "sub_c1",
            "tackle-cus2",
            "cus2",
            "canceled",
            "evt_c1",
            json!({"platform": "tackle", "cancelled_at": t0 + 900}),
        ),
        (
            "sub_c2",
            "tackle-cus2",
            "cus2",
            "canceled",
            "evt_c2",
            json!({"platform": "tackle", "cancelled_at": t0 + 500}),
        ),
    ];
    for (sub, tenant, customer, status, event, snapshot) in rows {
        sqlx::query(
            "INSERT INTO subscription_state (subscription_id, tenant, customer_id, status, event_id, event_created, snapshot) \
             VALUES ($1, $2, $3, $4, $5, now(), $6)",
        )
        .bind(sub)
        .bind(tenant)
        .bind(customer)
        .bind(status)
        .bind(event)
        .bind(snapshot)
        .execute(&pool)
        .await
        .expect("insert subscription state");
    }

    MIGRATOR
        .run(&pool)
        .await
        .expect("the rest of the migrations");

    let learned: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT subscription_id, platform, (snapshot->>'created')::bigint \
         FROM subscription_state ORDER BY subscription_id",
    )
    .fetch_all(&pool)
    .await
    .expect("read subscription state");
    assert_eq!(
        learned,
        vec![
            ("sub_a_old".into(), Some("leadsite-io".into()), Some(t0)),
            (
                "sub_b_new".into(),
                Some("leadsite-io".into()),
                Some(t0 + 100)
            ),
            ("sub_c1".into(), Some("tackle".into()), Some(t0)),
            ("sub_c2".into(), Some("tackle".into()), Some(t0 + 10)),
        ],
        "each row's platform from its snapshot, its creation from the first event about it"
    );
    let governing: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tenant, platform, subscription_id FROM billing_tenants ORDER BY tenant",
    )
    .fetch_all(&pool)
    .await
    .expect("read billing tenants");
    assert_eq!(
        governing,
        vec![
            (
                "leadsite-io-cus1".into(),
                "leadsite-io".into(),
                "sub_b_new".into()
            ),
            ("tackle-cus2".into(), "tackle".into(), "sub_c1".into()),
        ],
        "the newest live subscription governs; with all ended, the one that ended last"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
