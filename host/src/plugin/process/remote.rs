//! [`Remote`]: a plugin object that lives in a plugin process, and its calls.
//!
//! Failures of the process itself become the object's own kind of failure, so the engine
//! treats them like any other: a transform's error (the route's `on_error`), a retryable
//! delivery failure (retried after the process is back), a failed poll (tried next interval).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use orgloop_plugin_sdk::abi::CancelBox;
use orgloop_plugin_sdk::{Event, Outcome, Polled, TransformCtx, Verdict};

use super::supervisor::{CallError, Supervisor};
use super::wire::{self, Down, Reply};
use crate::module::generation::GRACE;
use crate::plugin::library::{DeliveryRequest, Failure};

/// An object built in a plugin process; dropping it drops it there.
pub struct Remote {
    id: u64,
    sup: Arc<Supervisor>,
}

impl Remote {
    pub fn new(id: u64, sup: Arc<Supervisor>) -> Self {
        Remote { id, sup }
    }

    pub fn apply(
        &self,
        event: &Event,
        ctx: &TransformCtx<'_>,
        deadline: Duration,
    ) -> Result<Verdict, String> {
        let reply = self
            .sup
            .call_blocking("a transform call", deadline, |call| Down::Apply {
                call,
                object: self.id,
                event: event.clone(),
                ctx: wire::Ctx {
                    source: ctx.source.to_owned(),
                    route: ctx.route.to_owned(),
                    actor: ctx.actor.to_owned(),
                    module: ctx.module.to_owned(),
                },
            })
            .map_err(|e| e.message)?;
        match reply {
            Reply::Verdict(Ok(wire::Verdict::Pass)) => Ok(Verdict::Pass),
            Reply::Verdict(Ok(wire::Verdict::Drop)) => Ok(Verdict::Drop),
            Reply::Verdict(Ok(wire::Verdict::Replace(e))) => Ok(Verdict::Replace(e)),
            Reply::Verdict(Err(e)) => Err(e),
            other => Err(unexpected(&other)),
        }
    }

    pub fn deliver(
        &self,
        req: DeliveryRequest,
        cancel: CancelBox,
    ) -> impl Future<Output = Result<Outcome, Failure>> + Send + 'static {
        let started = self.sup.call(|call| Down::Deliver {
            call,
            object: self.id,
            delivery: req,
        });
        async move {
            let mut call = started.map_err(unavailable)?;
            let reply = tokio::select! {
                r = call.answer() => r,
                () = cancel.cancelled() => {
                    call.cancel();
                    // As in the daemon, a delivery that ignores its cancellation is given up
                    // after the grace (the child goes on with it, and answers no one).
                    match tokio::time::timeout(GRACE, call.answer()).await {
                        Ok(r) => r,
                        Err(_) => Err(CallError::new(format!(
                            "the delivery did not end within {} s of its cancellation",
                            GRACE.as_secs()
                        ))),
                    }
                }
            };
            match reply.map_err(unavailable)? {
                Reply::Outcome(Ok(wire::Outcome::Delivered)) => Ok(Outcome::Delivered),
                Reply::Outcome(Ok(wire::Outcome::Rejected(why))) => Ok(Outcome::Rejected(why)),
                Reply::Outcome(Err(f)) => Err(Failure {
                    message: f.message,
                    permanent: f.permanent,
                    retry_after: f.retry_after_ms.map(Duration::from_millis),
                }),
                other => Err(Failure::new(unexpected(&other))),
            }
        }
    }

    pub fn poll(
        &self,
        checkpoint: Option<String>,
    ) -> impl Future<Output = Result<Polled, String>> + Send + 'static {
        let started = self.sup.call(|call| Down::Poll {
            call,
            object: self.id,
            checkpoint,
        });
        async move {
            let mut call = started.map_err(|e| e.message)?;
            match call.answer().await.map_err(|e| e.message)? {
                Reply::Polled(Ok(p)) => Ok(Polled {
                    events: p.events,
                    checkpoint: p.checkpoint,
                }),
                Reply::Polled(Err(e)) => Err(e),
                other => Err(unexpected(&other)),
            }
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.sup.forget(self.id);
    }
}

/// A delivery the process could not take: retried, no sooner than the process should be back
/// (unless it can never be sent).
fn unavailable(e: CallError) -> Failure {
    Failure {
        message: e.message,
        permanent: e.permanent,
        retry_after: e.retry_after,
    }
}

fn unexpected(reply: &Reply) -> String {
    format!("the plugin process answered out of turn: {reply:?}")
}
