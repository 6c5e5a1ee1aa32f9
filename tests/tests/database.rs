//! The migrations against a real Postgres.

use stackplane_api::db::MIGRATOR;
use stackplane_tests::fresh_database;

const TABLES: [&str; 9] = [
    "api_tokens",
    "audit_log",
    "backup_records",
    "billing_resync",
    "billing_tenants",
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
