//! Reading access events from NATS JetStream (see [`service::eventbus`]).
//!
//! Each message is a signed batch, verified exactly as `POST /v1/batches` verifies one.
//! A fetched group of messages is appended per custodian in one database write each, and
//! acknowledged only once that write is on disk: a crash before the acknowledgement means a
//! redelivery, which the log answers with the existing leaf (exactly once). Messages that can never be accepted
//! (bad signature, not a member, another custodian's events, malformed) are terminated and
//! logged without their content; ones that failed for a passing reason (a member's DID
//! document unreachable, storage) are redelivered later.

use backon::BackoffBuilder as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;

use federation::events::AccessEvent;
use service::eventbus::{BusError, NatsConfig};

use crate::ingest::{append_events, verify_batch};
use crate::{VisibilityError, VisibilityState};

/// Messages taken per fetch.
const FETCH: usize = 1000;
/// Redelivery delay for a message that failed for a passing reason.
const RETRY_LATER: Duration = Duration::from_secs(2);
/// How long one fetch may take. A fetch asks for what is waiting without waiting for
/// more, so it normally answers within milliseconds; but if the server goes away after
/// taking the request, its answer never comes and the client's fetch has no deadline of
/// its own. Past this, the connection is dropped and made again (messages handed out and
/// not acknowledged are redelivered after the consumer's ack wait).
const FETCH_DEADLINE: Duration = Duration::from_secs(10);

/// Runs until the state is dropped: (re)connects with backoff and consumes.
async fn consume(state: Weak<VisibilityState>, config: NatsConfig) {
    let retry = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let mut backoff = retry.build();
    loop {
        let consumer = match connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "nats consumer not ready; will retry");
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff = retry.build();
        tracing::info!(stream = %config.stream, consumer = %config.consumer, "consuming access events from nats");
        loop {
            let Some(state) = state.upgrade() else { return };
            match consume_once(&state, &consumer).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading from nats failed; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

async fn connect(config: &NatsConfig) -> Result<PullConsumer, BusError> {
    let js = config.connect().await?;
    let stream = config.ensure_stream(&js).await?;
    config.consumer(&stream).await
}

/// What to do with one message once its group is processed.
#[derive(Clone, Copy)]
enum Fate {
    Ack,
    Term,
    Later,
}

/// Fetches what is waiting (without waiting for more), appends it, acknowledges it.
/// Returns how many messages were handled.
async fn consume_once(state: &VisibilityState, consumer: &PullConsumer) -> Result<usize, BusError> {
    let messages = tokio::time::timeout(FETCH_DEADLINE, fetch(consumer))
        .await
        .map_err(|_| BusError::JetStream("fetch got no answer; reconnecting".into()))??;
    if messages.is_empty() {
        return Ok(0);
    }

    let mut fates: Vec<Fate> = Vec::with_capacity(messages.len());
    // custodian → (message positions, events), appended together.
    let mut groups: BTreeMap<String, (Vec<usize>, Vec<AccessEvent>)> = BTreeMap::new();
    for (i, m) in messages.iter().enumerate() {
        let verified = match std::str::from_utf8(&m.payload) {
            Ok(jws) => verify_batch(state, jws).await,
            // A compact JWS is ASCII; anything else is no batch (and no JSON to read).
            Err(_) => Err(VisibilityError::BadBatch {
                check: federation::verify::Check::Format,
                detail: "message is not UTF-8".into(),
            }),
        };
        match verified {
            Ok(batch) => {
                let group = groups.entry(batch.custodian).or_default();
                group.0.push(i);
                group.1.extend(batch.events);
                fates.push(Fate::Ack);
            }
            Err(e) => {
                let fate = fate_of(&e);
                if matches!(fate, Fate::Term) {
                    tracing::warn!(error = %e, subject = %m.subject, "access-event message refused; nothing appended");
                }
                fates.push(fate);
            }
        }
    }
    for (custodian, (positions, events)) in groups {
        if let Err(e) = append_events(state, &custodian, events).await {
            // The whole group waits or goes: appends are all-or-nothing per call.
            let fate = fate_of(&e);
            if matches!(fate, Fate::Term) {
                tracing::warn!(error = %e, "access-event group refused; nothing appended");
            } else {
                tracing::warn!(error = %e, "appending from nats failed; will be redelivered");
            }
            for p in positions {
                fates[p] = fate;
            }
        }
    }
    // Everything acknowledged here is on disk: append_events returns after its commit.
    let count = messages.len();
    for (m, fate) in messages.iter().zip(fates) {
        let kind = match fate {
            Fate::Ack => AckKind::Ack,
            Fate::Term => AckKind::Term,
            Fate::Later => AckKind::Nak(Some(RETRY_LATER)),
        };
        // A lost acknowledgement only means a redelivery, which the log deduplicates.
        if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(error = %e, "acknowledging a nats message failed");
        }
    }
    Ok(count)
}

async fn fetch(consumer: &PullConsumer) -> Result<Vec<Message>, BusError> {
    let mut fetched = consumer
        .fetch()
        .max_messages(FETCH)
        .messages()
        .await
        .map_err(|e| BusError::JetStream(e.to_string()))?;
    let mut messages: Vec<Message> = Vec::new();
    while let Some(m) = fetched.next().await {
        messages.push(m.map_err(|e| BusError::JetStream(e.to_string()))?);
    }
    Ok(messages)
}

fn fate_of(e: &VisibilityError) -> Fate {
    match e {
        VisibilityError::Unavailable(_)
        | VisibilityError::Storage(_)
        | VisibilityError::Signing(_) => Fate::Later,
        _ => Fate::Term,
    }
}

/// Starts the consumer task when `[nats]` is configured.
pub(crate) fn spawn(state: &Arc<VisibilityState>) -> Option<tokio::task::JoinHandle<()>> {
    let config = state.config.nats.clone()?;
    Some(tokio::spawn(consume(Arc::downgrade(state), config)))
}
