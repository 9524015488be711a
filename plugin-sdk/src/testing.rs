//! Test a plugin without a daemon: [`TestHost`] builds your transforms, actors and sources through
//! the same glue the daemon uses (so config parsing, errors and panics behave as in production),
//! lends them a fake host with a virtual clock, and records what they log and emit.
//!
//! ```
//! use orgloop_plugin_sdk::prelude::*;
//! use orgloop_plugin_sdk::testing::{test_event, TestHost};
//!
//! #[derive(Deserialize)]
//! struct DropTest { value: bool }
//!
//! impl Transform for DropTest {
//!     type Config = Self;
//!     fn new(config: Self, _host: Host) -> Result<Self, PluginError> { Ok(config) }
//!     fn apply(&self, event: &Event, _ctx: &TransformCtx) -> Result<Verdict, PluginError> {
//!         let hit = event.get("payload.test").and_then(|v| v.as_bool()) == Some(self.value);
//!         Ok(if hit { Verdict::Drop } else { Verdict::Pass })
//!     }
//! }
//!
//! let host = TestHost::new();
//! let t = host.transform::<DropTest>(json!({"value": true})).unwrap();
//! assert_eq!(t.apply(&test_event(json!({"test": true}))).unwrap(), Verdict::Drop);
//! assert!(host.transform::<DropTest>(json!({"value": 3})).is_err()); // bad config
//! ```
//!
//! Time is virtual: [`Host::sleep`] returns at once as far as the test is concerned, and
//! [`TestHost::now`] moves forward by the time slept. A test of a ten-minute agent session runs in
//! microseconds.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, RResult, RSome, RStr, RString};
use async_ffi::{FfiFuture, FutureExt};
use serde_json::Value as Json;

use crate::abi::glue::{new_actor, new_source, new_transform};
use crate::abi::*;
use crate::actor::{Actor, Delivery, Outcome};
use crate::error::PluginError;
use crate::event::{Event, EventType};
use crate::host::{Host, HttpRequest, HttpResponse, Level};
use crate::source::{Polled, Source};
use crate::transform::{Transform, TransformCtx, Verdict};

/// An event with upstream's test defaults: source `test-source`, type `resource.changed`,
/// provenance `{platform: test, author: test-author, author_type: team_member}`, and `payload`.
pub fn test_event(payload: Json) -> Event {
    Event::builder("test-source", EventType::ResourceChanged)
        .platform("test")
        .provenance("author", "test-author")
        .provenance("author_type", "team_member")
        .payload(payload)
        .build()
}

type HttpHandler = Box<dyn Fn(HttpRequest) -> HttpResponse + Send + Sync>;

#[derive(Default)]
struct Shared {
    clock_ms: AtomicI64,
    timers: Mutex<Vec<(i64, Waker)>>,
    logs: Mutex<Vec<(Level, String)>>,
    emitted: Mutex<Vec<Event>>,
    http: Mutex<Option<HttpHandler>>,
}

impl Shared {
    fn now(&self) -> i64 {
        self.clock_ms.load(Ordering::SeqCst)
    }

    /// Ready once the clock reaches `deadline`; registers a timer until then.
    fn until(self: &Arc<Self>, deadline: i64) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.clone();
        std::future::poll_fn(move |cx| {
            if shared.now() >= deadline {
                return Poll::Ready(());
            }
            shared
                .timers
                .lock()
                .unwrap()
                .push((deadline, cx.waker().clone()));
            Poll::Pending
        })
    }
}

struct Services(Arc<Shared>);

impl HostServices for Services {
    fn log(&self, level: u8, message: RStr<'_>) {
        self.0
            .logs
            .lock()
            .unwrap()
            .push((Level::from_wire(level), message.to_string()));
    }
    fn now_ms(&self) -> i64 {
        self.0.now()
    }
    fn sleep(&self, ms: u64) -> FfiFuture<()> {
        self.0
            .until(self.0.now().saturating_add(ms as i64))
            .into_ffi()
    }
    fn emit(&self, event: Event) -> RResult<(), RString> {
        self.0.emitted.lock().unwrap().push(event.rehome());
        RResult::ROk(())
    }
    fn http(&self, request: FfiHttpRequest) -> FfiFuture<RResult<FfiHttpResponse, RString>> {
        let request = HttpRequest::from_wire(&request);
        let result = match &*self.0.http.lock().unwrap() {
            Some(handler) => RResult::ROk(handler(request).into_wire()),
            None => RResult::RErr(
                format!(
                    "no HTTP handler in this TestHost for {} {}",
                    request.method, request.url
                )
                .into(),
            ),
        };
        std::future::ready(result).into_ffi()
    }
}

struct TestCancel {
    shared: Arc<Shared>,
    at: Option<i64>,
}

impl CancelSignal for TestCancel {
    fn is_cancelled(&self) -> bool {
        self.at.is_some_and(|at| self.shared.now() >= at)
    }
    fn cancelled(&self) -> FfiFuture<()> {
        match self.at {
            Some(at) => self.shared.until(at).into_ffi(),
            None => std::future::pending().into_ffi(),
        }
    }
}

/// A fake daemon for unit tests. See the [module docs](self).
#[derive(Clone)]
pub struct TestHost {
    shared: Arc<Shared>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// A host whose clock starts at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        let shared = Shared {
            clock_ms: AtomicI64::new(1_767_225_600_000),
            ..Default::default()
        };
        TestHost {
            shared: Arc::new(shared),
        }
    }

    /// A [`Host`] backed by this test host, to call your type's `new` directly.
    pub fn host(&self) -> Host {
        Host::new(HostServices_TO::from_value(
            Services(self.shared.clone()),
            TD_Opaque,
        ))
    }

    /// Builds transform `T` from `config`, as the daemon would.
    pub fn transform<T: Transform>(&self, config: Json) -> Result<TestTransform, PluginError> {
        new_transform::<T>(&config.to_string(), self.host())
            .map(|obj| TestTransform { obj })
            .map_err(PluginError::new)
    }

    /// Builds actor `A` from `config`, as the daemon would.
    pub fn actor<A: Actor>(&self, config: Json) -> Result<TestActor, PluginError> {
        new_actor::<A>(&config.to_string(), self.host())
            .map(|obj| TestActor {
                obj,
                host: self.clone(),
            })
            .map_err(PluginError::new)
    }

    /// Builds source `S` from `config`, as the daemon would.
    pub fn source<S: Source>(&self, config: Json) -> Result<TestSource, PluginError> {
        new_source::<S>(&config.to_string(), self.host())
            .map(|obj| TestSource {
                obj,
                host: self.clone(),
            })
            .map_err(PluginError::new)
    }

    /// The virtual time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.shared.now() as u64)
    }

    /// Moves the virtual clock forward.
    pub fn advance(&self, by: Duration) {
        self.shared
            .clock_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.fire_due_timers();
    }

    /// Everything logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.shared.logs.lock().unwrap().clone()
    }

    /// Every event emitted so far.
    pub fn emitted(&self) -> Vec<Event> {
        self.shared.emitted.lock().unwrap().clone()
    }

    /// Answers [`Host::http`] calls with `handler`.
    pub fn on_http(&self, handler: impl Fn(HttpRequest) -> HttpResponse + Send + Sync + 'static) {
        *self.shared.http.lock().unwrap() = Some(Box::new(handler));
    }

    fn fire_due_timers(&self) {
        let now = self.shared.now();
        let due: Vec<Waker> = {
            let mut timers = self.shared.timers.lock().unwrap();
            let (due, later) = timers.drain(..).partition(|(at, _)| *at <= now);
            *timers = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// Runs a future to completion. When it waits on nothing but the virtual clock, the clock jumps
    /// to the next timer.
    ///
    /// # Panics
    /// If the future waits on something that can never happen here (no timer, no wake-up).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            if flag.0.swap(false, Ordering::SeqCst) {
                continue;
            }
            let next = self
                .shared
                .timers
                .lock()
                .unwrap()
                .iter()
                .map(|(at, _)| *at)
                .min();
            let next =
                next.expect("the future is pending but waits on no timer and nothing woke it");
            self.shared.clock_ms.fetch_max(next, Ordering::SeqCst);
            self.fire_due_timers();
        }
    }
}

/// A transform built by [`TestHost::transform`].
pub struct TestTransform {
    obj: TransformBox,
}

impl TestTransform {
    /// Applies the transform with a context naming the event's source, route `test-route`, actor
    /// `test-actor` and module `test`.
    pub fn apply(&self, event: &Event) -> Result<Verdict, PluginError> {
        let ctx = TransformCtx {
            source: event.source(),
            route: "test-route",
            actor: "test-actor",
            module: "test",
        };
        self.apply_in(event, &ctx)
    }

    /// Applies the transform with the given context.
    pub fn apply_in(&self, event: &Event, ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
        let ctx = FfiTransformCtx {
            source: ctx.source.into(),
            route: ctx.route.into(),
            actor: ctx.actor.into(),
            module: ctx.module.into(),
        };
        match self.obj.apply(event, ctx) {
            FfiVerdict::Pass => Ok(Verdict::Pass),
            FfiVerdict::Replace(e) => Ok(Verdict::Replace(e)),
            FfiVerdict::Drop => Ok(Verdict::Drop),
            FfiVerdict::Error(e) => Err(PluginError::new(e.as_str())),
        }
    }
}

/// An actor built by [`TestHost::actor`].
pub struct TestActor {
    obj: ActorBox,
    host: TestHost,
}

impl TestActor {
    /// Delivers and waits for the outcome; the cancellation signal never fires.
    pub fn deliver(&self, delivery: Delivery) -> Result<Outcome, PluginError> {
        self.run(delivery, None)
    }

    /// Delivers, raising the cancellation signal once `after` of virtual time has passed.
    pub fn deliver_cancelled_after(
        &self,
        delivery: Delivery,
        after: Duration,
    ) -> Result<Outcome, PluginError> {
        let at = self.host.shared.now() + after.as_millis() as i64;
        self.run(delivery, Some(at))
    }

    fn run(&self, d: Delivery, cancel_at: Option<i64>) -> Result<Outcome, PluginError> {
        let wire = FfiDelivery {
            event: d.event,
            config_json: d.config.to_string().into(),
            prompt: d.prompt.map_or(RNone, |p| RSome(p.into())),
            prompt_file: d.prompt_file.map_or(RNone, |p| RSome(p.into())),
            route: d.route.into(),
            idempotency_key: d.idempotency_key.into(),
            attempt: d.attempt,
        };
        let cancel = CancelSignal_TO::from_value(
            TestCancel {
                shared: self.host.shared.clone(),
                at: cancel_at,
            },
            TD_Opaque,
        );
        match self.host.block_on(self.obj.deliver(wire, cancel)) {
            FfiOutcome::Delivered => Ok(Outcome::Delivered),
            FfiOutcome::Rejected(why) => Ok(Outcome::Rejected(why.into_string())),
            FfiOutcome::Error(f) => {
                let e = PluginError::new(f.message.as_str());
                let e = if f.permanent { e.permanent() } else { e };
                Err(match f.retry_after_ms {
                    0 => e,
                    ms => e.with_retry_after(Duration::from_millis(ms)),
                })
            }
        }
    }
}

/// A source built by [`TestHost::source`].
pub struct TestSource {
    obj: SourceBox,
    host: TestHost,
}

impl TestSource {
    /// Polls once from `checkpoint`.
    pub fn poll(&self, checkpoint: Option<&str>) -> Result<Polled, PluginError> {
        let checkpoint = checkpoint.map_or(RNone, |c| RSome(c.into()));
        match self.host.block_on(self.obj.poll(checkpoint)) {
            FfiPolled::Ok { events, checkpoint } => Ok(Polled {
                events: events.into_vec(),
                checkpoint: checkpoint.map(|c| c.into_string()).into_option(),
            }),
            FfiPolled::Error(e) => Err(PluginError::new(e.as_str())),
        }
    }
}

/// A JSON response with the given status, for [`TestHost::on_http`].
pub fn json_response(status: u16, body: Json) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Cancel;
    use crate::{race, Either};
    use serde_json::json;

    struct Panicky;
    impl Transform for Panicky {
        type Config = Json;
        fn new(config: Json, _: Host) -> Result<Self, PluginError> {
            if config == json!({"fail": true}) {
                return Err(PluginError::new("told to fail"));
            }
            Ok(Panicky)
        }
        fn apply(&self, _: &Event, _: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
            panic!("boom")
        }
    }

    #[test]
    fn panics_and_constructor_errors_become_errors() {
        let host = TestHost::new();
        let err = host
            .transform::<Panicky>(json!({"fail": true}))
            .err()
            .unwrap();
        assert_eq!(err.message(), "told to fail");
        let t = host.transform::<Panicky>(json!({})).unwrap();
        let err = t.apply(&test_event(json!({}))).unwrap_err();
        assert!(
            err.message().contains("panicked") && err.message().contains("boom"),
            "{err}"
        );
    }

    struct Sleeper {
        host: Host,
    }
    impl Actor for Sleeper {
        type Config = Json;
        fn new(_: Json, host: Host) -> Result<Self, PluginError> {
            Ok(Sleeper { host })
        }
        async fn deliver(&self, d: Delivery, cancel: Cancel) -> Result<Outcome, PluginError> {
            let secs = d.config["secs"].as_u64().unwrap_or(0);
            match race(
                self.host.sleep(Duration::from_secs(secs)),
                cancel.cancelled(),
            )
            .await
            {
                Either::Left(()) => {
                    self.host.emit(test_event(json!({"slept": secs})))?;
                    Ok(Outcome::Delivered)
                }
                Either::Right(()) => Ok(Outcome::Rejected("cancelled".into())),
            }
        }
    }

    #[test]
    fn virtual_clock_runs_sleeps_and_cancellation() {
        let host = TestHost::new();
        let start = host.now();
        let a = host.actor::<Sleeper>(json!({})).unwrap();
        let d = Delivery::new(test_event(json!({}))).config(json!({"secs": 600}));
        assert_eq!(a.deliver(d.clone()), Ok(Outcome::Delivered));
        assert_eq!(
            host.now().duration_since(start).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(host.emitted().len(), 1);
        let outcome = a.deliver_cancelled_after(d, Duration::from_secs(5));
        assert_eq!(outcome, Ok(Outcome::Rejected("cancelled".into())));
    }
}
