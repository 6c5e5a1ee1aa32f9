//! Group commit of webhook deliveries: every delivery that arrives while a batch is being
//! written waits for the next one, which stores all of them with a single `INSERT … SELECT FROM
//! UNNEST … ON CONFLICT (id) DO NOTHING` (one statement, one commit, one WAL flush). A delivery
//! is answered only after the statement that stored it returned, so nothing is acknowledged
//! before it is durable; a batch that fails is retried row by row, so one bad row fails only
//! its own delivery.
//!
//! The same statement writes each delivery's `audit_log` row (every state-changing call has
//! one, `crate::audit`): the audit log costs no commit of its own per delivery, and a delivery
//! is never stored without its row or audited as stored without being so.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Most deliveries stored by one statement.
const MAX_BATCH: usize = 256;
/// Batches written at once (each holds one connection of the api's pool of 16 while it runs).
const WRITERS: usize = 4;
/// Deliveries waiting for a writer before new ones wait to be queued.
const QUEUE: usize = 4096;
/// Longest one statement may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One delivery's row of `stripe_events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    /// `event.created`, Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub subscription_id: Option<String>,
    /// The delivery's body, as received (stored as JSONB).
    pub payload: String,
    /// The `x-request-id` of the delivery, for its audit row.
    pub request_id: Option<String>,
    /// The address the delivery came from, for its audit row.
    pub client: String,
}

/// Why a delivery was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storing the event: {0}")]
    Database(#[from] sqlx::Error),
    #[error("storing the event took longer than {}s", STATEMENT_TIMEOUT.as_secs())]
    Timeout,
    #[error("the intake writers stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<bool, StoreError>>;

struct Pending {
    row: EventRow,
    /// `Ok(true)`: stored now; `Ok(false)`: a duplicate (already stored).
    reply: Reply,
}

/// The intake's queue and writers (started with the first delivery, on its runtime).
#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

impl Intake {
    pub fn new(db: PgPool) -> Self {
        Intake {
            inner: Arc::new(Inner {
                db,
                queue: OnceLock::new(),
            }),
        }
    }

    /// Stores `row` with the next batch: `Ok(true)` once it is stored, `Ok(false)` when an
    /// event of its id already was; either way its audit row is written by the same statement.
    /// The caller bounds the wait.
    pub async fn store(&self, row: EventRow) -> Result<bool, StoreError> {
        let queue = self.inner.queue.get_or_init(|| self.start());
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { row, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    fn start(&self) -> mpsc::Sender<Pending> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(self.inner.db.clone(), rx.clone()));
        }
        tx
    }
}

/// Takes what is queued (at least one delivery, at most [`MAX_BATCH`]) and stores it, until
/// the queue closes. While one writer stores, the next waits on the queue: the deliveries that
/// arrive meanwhile make its batch.
async fn writer(db: PgPool, rx: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        store_batch(&db, batch).await;
    }
}

async fn store_batch(db: &PgPool, batch: Vec<Pending>) {
    // Within one batch the first delivery of an id is the one inserted; the others of that id
    // are duplicates whatever the statement says (they are still audited by it).
    let mut seen = HashSet::new();
    let first: Vec<bool> = batch
        .iter()
        .map(|p| seen.insert(p.row.id.clone()))
        .collect();
    let rows: Vec<(&EventRow, bool)> = batch
        .iter()
        .map(|p| &p.row)
        .zip(first.iter().copied())
        .collect();
    match insert(db, &rows).await {
        Ok(stored) => {
            let size = batch.len();
            for (p, first) in batch.into_iter().zip(first) {
                let _ = p.reply.send(Ok(first && stored.contains(&p.row.id)));
            }
            tracing::debug!(size, "webhook batch stored");
        }
        Err(error) if batch.len() > 1 => {
            tracing::warn!(%error, size = batch.len(), "webhook batch failed; storing its events one by one");
            for p in batch {
                let result = insert(db, &[(&p.row, true)])
                    .await
                    .map(|stored| stored.contains(&p.row.id));
                let _ = p.reply.send(result);
            }
        }
        Err(error) => {
            for p in batch {
                let _ = p.reply.send(Err(StoreError::Database(sqlx::Error::Protocol(
                    error.to_string(),
                ))));
            }
        }
    }
}

/// Inserts `rows` and an audit row for each in one statement; `true` marks the rows whose event
/// is inserted (the first of its id in the batch). Answers the ids it stored (not those already
/// there).
async fn insert(db: &PgPool, rows: &[(&EventRow, bool)]) -> Result<HashSet<String>, StoreError> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut created = Vec::with_capacity(rows.len());
    let mut livemode = Vec::with_capacity(rows.len());
    let mut subscriptions = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    let mut request_ids = Vec::with_capacity(rows.len());
    let mut clients = Vec::with_capacity(rows.len());
    let mut firsts = Vec::with_capacity(rows.len());
    for (r, first) in rows {
        ids.push(r.id.as_str());
        types.push(r.event_type.as_str());
        created.push(r.created as f64);
        livemode.push(r.livemode);
        subscriptions.push(r.subscription_id.as_deref());
        payloads.push(r.payload.as_str());
        request_ids.push(r.request_id.as_deref());
        clients.push(r.client.as_str());
        firsts.push(*first);
    }
    // Both inserts see the same snapshot; the audit rows learn from `stored` which deliveries
    // were duplicates. Their shape is the audit middleware's (`crate::audit`), their names
    // its own.
    let route = crate::hardening::WEBHOOK;
    let action = crate::audit::action(&axum::http::Method::POST, route);
    let actor = crate::audit::Actor::Stripe.name();
    let statement = sqlx::query_scalar::<_, String>(
        "WITH u AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::bool[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::bool[])
                 AS u(id, event_type, created, livemode, subscription_id, payload, request_id,
                      client, first)
         ),
         stored AS (
             INSERT INTO stripe_events (id, event_type, created, livemode, subscription_id, payload)
             SELECT u.id, u.event_type, to_timestamp(u.created), u.livemode, u.subscription_id,
                    u.payload::jsonb
             FROM u WHERE u.first
             ON CONFLICT (id) DO NOTHING
             RETURNING id
         ),
         audited AS (
             INSERT INTO audit_log (actor, action, target, outcome, request_id, details)
             SELECT $10, $11, u.id, 'success', u.request_id,
                    jsonb_build_object('method', 'POST', 'route', $12::text,
                        'status', 200, 'client', u.client, 'eventType', u.event_type,
                        'duplicate', NOT (u.first AND u.id IN (SELECT id FROM stored)))
             FROM u
         )
         SELECT id FROM stored",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&created)
    .bind(&livemode)
    .bind(&subscriptions)
    .bind(&payloads)
    .bind(&request_ids)
    .bind(&clients)
    .bind(&firsts)
    .bind(&actor)
    .bind(&action)
    .bind(route)
    .fetch_all(db);
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(Ok(stored)) => Ok(stored.into_iter().collect()),
        Ok(Err(error)) => Err(StoreError::Database(error)),
        Err(_) => Err(StoreError::Timeout),
    }
}
