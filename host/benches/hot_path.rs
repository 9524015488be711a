//! The daemon's per-event hot path.
//!
//! - `transform_call`: the `filters::filter` transform (plain equality, no regex) on a
//!   webhook-like event, called (a) through the plugin ABI — the release `.so` loaded with
//!   [`Loader`] and applied with [`PluginTransform::apply`], as the daemon does — (b) through the
//!   SDK's export glue without `dlopen` (`TestHost::transform`: the same `#[sabi_trait]` object
//!   and panic guard, linked in), and (c) directly: the `Filter` type from the `orgloop_filters`
//!   rlib, via `Transform::apply`; and (d) `process`: the same `.so` with `isolation: process`,
//!   in a child process (this bench binary in plugin-host mode), one frame each way per call.
//! - `actor_call`: one delivery to the `agent::noop` actor, which accepts at once, mapped in this
//!   process and in a child process: the cost of a delivery's round trip to a plugin process.
//! - `in_process_path`: `Module::accept` on a module loaded from a directory with the release
//!   plugins, its queue in memory — queueing, then (on the module's dispatcher) route matching,
//!   the transform through the ABI, and the delivery to the `agent::noop` actor — with 1, 100 and
//!   1000 routes on the source, of which one matches. `accept` times queueing alone (what the
//!   webhook handler pays before its answer, without the disk); `accept_and_deliver` also waits
//!   until every event is finished. `accept_dropped` sends a bot's event, which the transform
//!   drops, so no delivery starts.
//! - `rollout`: what a canary and a rollout's comparison add — `bucket` (the stable hash of an
//!   event id that picks its generation, paid per event and attempt during a canary),
//!   `Health::attempt` (counted per attempt, always), and `compare` of two generations' figures
//!   (every 50 ms during a rollout).
//! - `route_match`: matching alone (`Generation::routes_for` + `Route::matches`) for those modules.
//!
//! `cargo bench -p orgloop --bench hot_path` builds the plugins it needs itself
//! (`cargo build --release -p orgloop-filters -p orgloop-agent`, a no-op when they are up to date).
//! Short runs: `cargo bench -p orgloop --bench hot_path -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use orgloop::config::spec::{Isolation, PluginSpec};
use orgloop::engine::deliver::signal;
use orgloop::module::{Generation, Module, Registry};
use orgloop::plugin::http_client::HttpClient;
use orgloop::plugin::library::DeliveryRequest;
use orgloop::plugin::services::Services;
use orgloop::plugin::store::PluginStore;
use orgloop::plugin::{Library, Loader, PluginTransform};
use orgloop::queue::{Durability, Options as QueueOptions, Queue};
use orgloop_filters::{Filter, FilterConfig};
use orgloop_plugin_sdk::serde_json::{self, json, Value as Json};
use orgloop_plugin_sdk::testing::{TestHost, TestTransform};
use orgloop_plugin_sdk::{Event, EventType, Outcome, Transform, TransformCtx, Verdict};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The transform's config in every benchmark: one plain (non-regex) equality.
fn filter_config() -> Json {
    json!({"exclude": {"provenance.author_type": "bot"}})
}

/// A webhook-like event (a pull request opened, as a generic webhook would carry it): ten payload
/// fields, several of them nested objects.
fn webhook_event(author_type: &str) -> Event {
    Event::builder("inbox", EventType::ResourceChanged)
        .platform("webhook")
        .provenance("platform_event", "pull_request")
        .provenance("author", "alice")
        .provenance("author_type", author_type)
        .payload(json!({
            "action": "opened",
            "number": 1347,
            "pull_request": {
                "id": 1_298_765_432,
                "title": "Fix the drain timeout on reload",
                "state": "open",
                "draft": false,
                "head": {"ref": "fix/drain", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"},
                "base": {"ref": "main", "sha": "2f0a1c3e9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"},
                "labels": [{"name": "bug"}, {"name": "engine"}],
                "additions": 42,
                "deletions": 7,
            },
            "repository": {
                "id": 35_129_377,
                "full_name": "orgloop/orgloop",
                "private": false,
                "owner": {"login": "orgloop", "type": "Organization"},
            },
            "sender": {"login": "alice", "id": 583_231, "type": "User"},
            "installation": {"id": 2_311_213},
            "created_at": "2026-01-01T12:00:00Z",
            "url": "https://example.com/orgloop/orgloop/pull/1347",
            "kind": "pull_request",
            "priority": "p2",
        }))
        .build()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/release`, after building the plugins there (once per run).
fn release_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "orgloop-filters",
                "-p",
                "orgloop-agent",
            ])
            .current_dir(workspace())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --release of the plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| workspace().join(d))
            .unwrap_or_else(|| workspace().join("target"));
        target.join("release")
    })
}

fn plugin(name: &str) -> PathBuf {
    let path = release_plugins().join(format!("liborgloop_{name}.so"));
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// A scratch directory for this run, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-hot-path-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a plugin object built for a benchmark gets from the host.
fn services(object: &str) -> Services {
    Services {
        module: Arc::from("bench"),
        object: object.into(),
        source: None,
        emitter: Arc::new(|_| Ok(())),
        http: HttpClient::default(),
        log_to: None,
    }
}

/// Loads the release build of plugin `name` here or in a plugin process.
fn load(loader: &Loader, name: &str, isolation: Isolation) -> Arc<Library> {
    let entry = PluginSpec::for_library(name, &plugin(name), isolation);
    loader
        .load("bench", &entry)
        .unwrap_or_else(|e| panic!("load {name} ({}): {e}", isolation.as_str()))
}

/// `filters::filter` dropping bots, built from the plugin loaded `isolation`.
fn filter(loader: &Loader, isolation: Isolation) -> PluginTransform {
    load(loader, "filters", isolation)
        .new_transform(
            "filter",
            &filter_config().to_string(),
            services("filters::filter/drop-bots"),
        )
        .expect("build filters::filter")
}

fn transform_call(c: &mut Criterion) {
    // (a) Through the ABI, as the daemon calls it.
    let dir = scratch("transform_call");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let abi = filter(&loader, Isolation::InProcess);
    // (d) In a plugin process.
    let process = filter(&loader, Isolation::Process);
    let deadline = Duration::from_secs(5);

    // (b) The SDK's glue, linked in: same object type and panic guard, no dlopen.
    let test_host = TestHost::new();
    let glue: TestTransform = test_host
        .transform::<Filter>(filter_config())
        .expect("build Filter through the glue");

    // (c) Direct: the Rust type itself.
    let config: FilterConfig = serde_json::from_value(filter_config()).unwrap();
    let direct = Filter::new(Some(config), test_host.host()).expect("build Filter");

    let ctx = TransformCtx {
        source: "inbox",
        route: "notify-people",
        actor: "sink",
        module: "bench",
    };
    let mut group = c.benchmark_group("transform_call");
    for (case, author_type, want) in [
        ("pass", "team_member", Verdict::Pass),
        ("drop", "bot", Verdict::Drop),
    ] {
        let event = webhook_event(author_type);
        assert_eq!(abi.apply(&event, &ctx, deadline), Ok(want.clone()));
        assert_eq!(process.apply(&event, &ctx, deadline), Ok(want.clone()));
        assert_eq!(glue.apply_in(&event, &ctx), Ok(want.clone()));
        assert_eq!(direct.apply(&event, &ctx), Ok(want));
        group.bench_function(BenchmarkId::new("abi", case), |b| {
            b.iter(|| abi.apply(black_box(&event), black_box(&ctx), deadline))
        });
        group.bench_function(BenchmarkId::new("process", case), |b| {
            b.iter(|| process.apply(black_box(&event), black_box(&ctx), deadline))
        });
        group.bench_function(BenchmarkId::new("sdk_glue", case), |b| {
            b.iter(|| glue.apply_in(black_box(&event), black_box(&ctx)))
        });
        group.bench_function(BenchmarkId::new("direct", case), |b| {
            b.iter(|| direct.apply(black_box(&event), black_box(&ctx)))
        });
    }
    group.finish();
    drop((abi, process, loader));
    let _ = std::fs::remove_dir_all(&dir);
}

fn actor_call(c: &mut Criterion) {
    let dir = scratch("actor_call");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let rt = runtime();
    let mut group = c.benchmark_group("actor_call");
    for isolation in [Isolation::InProcess, Isolation::Process] {
        let _guard = rt.enter();
        let actor = load(&loader, "agent", isolation)
            .new_actor("noop", "{}", services("agent::noop/sink"))
            .expect("build agent::noop");
        let event = webhook_event("team_member");
        let deliver = || {
            let request = DeliveryRequest {
                event: event.clone(),
                config_json: "{}".into(),
                prompt: None,
                prompt_file: None,
                route: "notify-people".into(),
                idempotency_key: "evt:notify-people".into(),
                attempt: 1,
            };
            let cancel = signal(CancellationToken::new());
            rt.block_on(actor.deliver(request, cancel))
        };
        assert_eq!(deliver(), Ok(Outcome::Delivered));
        group.bench_function(isolation.as_str(), |b| b.iter(deliver));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a module with `routes` routes on source `inbox`; only the last one matches
/// `webhook_event`. Every route runs `drop-bots` and delivers to `sink` (`agent::noop`).
fn write_module(dir: &Path, name: &str, routes: usize) {
    let files = [
        (
            "orgloop.yaml".to_owned(),
            format!(
                r#"apiVersion: orgloop/v1alpha1
kind: Project
metadata:
  name: {name}
plugins:
  - name: filters
    path: {filters}
    version: "^0.1"
  - name: agent
    path: {agent}
    version: "^0.1"
connectors:
  - connectors/connectors.yaml
transforms:
  - transforms/transforms.yaml
"#,
                filters = plugin("filters").display(),
                agent = plugin("agent").display(),
            ),
        ),
        (
            "connectors/connectors.yaml".to_owned(),
            r#"apiVersion: orgloop/v1alpha1
kind: ConnectorGroup
sources:
  - id: inbox
    connector: webhook
    config:
      event_type_field: kind
actors:
  - id: sink
    connector: agent::noop
"#
            .to_owned(),
        ),
        (
            "transforms/transforms.yaml".to_owned(),
            r#"apiVersion: orgloop/v1alpha1
kind: TransformGroup
transforms:
  - name: drop-bots
    type: plugin
    symbol: filters::filter
    config:
      exclude:
        provenance.author_type: bot
"#
            .to_owned(),
        ),
        ("routes/routes.yaml".to_owned(), {
            let mut yaml = "apiVersion: orgloop/v1alpha1\nkind: RouteGroup\nroutes:\n".to_owned();
            for i in 0..routes {
                let platform_event = if i + 1 == routes {
                    "pull_request".to_owned()
                } else {
                    format!("other-{i}")
                };
                yaml += &format!(
                    r#"  - name: route-{i}
    when:
      source: inbox
      events: [resource.changed]
      filter:
        provenance.platform_event: {platform_event}
    transforms:
      - ref: drop-bots
    then:
      actor: sink
      config:
        summary: "{{{{payload.pull_request.title}}}}"
"#
                );
            }
            yaml
        }),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// A registry with one module of `routes` routes, loaded from `dir`.
/// Undoes [`load_module`]: unloads the module (closing its plugins) and removes its directory.
fn unload_module(rt: &Runtime, registry: Arc<Registry>, module: Arc<Module>, dir: &Path) {
    rt.block_on(registry.shutdown(Duration::from_secs(5)));
    drop(module);
    drop(registry);
    let _ = std::fs::remove_dir_all(dir);
}

fn load_module(rt: &Runtime, dir: &Path, routes: usize) -> (Arc<Registry>, Arc<Module>) {
    write_module(&dir.join("module"), "bench", routes);
    // In memory: this measures the engine's path; the disk's part is measured end to end by
    // `orgloop-load` (BENCHMARKS.md).
    let queue = Queue::open(&QueueOptions {
        durability: Durability::Memory,
        dir: dir.join("data"),
        max_bytes: u64::MAX,
        segment_bytes: 32 << 20,
        cluster: None,
    })
    .unwrap();
    let registry = Arc::new(Registry::new(
        Loader::new(PluginStore::new(dir.join("store"))),
        queue,
    ));
    let module = rt
        .block_on(registry.load(&dir.join("module")))
        .unwrap_or_else(|e| panic!("load the bench module: {e}"));
    assert_eq!(module.current().unwrap().routes.len(), routes);
    (registry, module)
}

/// Waits until every event accepted by `module` is finished: routed, and its deliveries done.
async fn settle(module: &Module) {
    while module
        .queue
        .stats(&module.name)
        .is_some_and(|s| s.entries > 0)
    {
        tokio::task::yield_now().await;
    }
}

/// Events are accepted in batches of at most this many, and finished between batches, so that
/// work never piles up.
const BATCH: u64 = 256;

/// Times `iters` calls of `module.accept` in batches. The batch's events are cloned beforehand
/// (untimed). With `include_delivery`, the time until every event is finished is counted too.
fn time_accept(
    rt: &Runtime,
    module: &Module,
    event: &Event,
    iters: u64,
    include_delivery: bool,
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        let mut left = iters;
        let mut batch = Vec::with_capacity(BATCH as usize);
        while left > 0 {
            let n = left.min(BATCH);
            batch.extend((0..n).map(|_| event.clone()));
            let start = Instant::now();
            for e in batch.drain(..) {
                module.accept(black_box(e), None).unwrap();
            }
            if include_delivery {
                settle(module).await;
                total += start.elapsed();
            } else {
                total += start.elapsed();
                settle(module).await;
            }
            left -= n;
        }
        total
    })
}

const ROUTE_COUNTS: [usize; 3] = [1, 100, 1000];

fn in_process_path(c: &mut Criterion) {
    let rt = runtime();
    let human = webhook_event("team_member");
    let bot = webhook_event("bot");
    let mut group = c.benchmark_group("in_process_path");
    for routes in ROUTE_COUNTS {
        let dir = scratch(&format!("in_process_path-{routes}"));
        let (registry, module) = load_module(&rt, &dir, routes);
        let generation = module.current().unwrap();
        let stats = generation.routes[routes - 1].stats.clone();
        let fired = |s: &orgloop::engine::route::RouteStats| {
            s.fire_count.load(std::sync::atomic::Ordering::Relaxed)
        };
        // The event goes the whole way: one route fires and one delivery runs.
        let before = fired(&stats);
        time_accept(&rt, &module, &human, 1, true);
        assert_eq!(fired(&stats), before + 1);

        group.bench_function(BenchmarkId::new("accept", routes), |b| {
            b.iter_custom(|iters| time_accept(&rt, &module, &human, iters, false))
        });
        group.bench_function(BenchmarkId::new("accept_and_deliver", routes), |b| {
            b.iter_custom(|iters| time_accept(&rt, &module, &human, iters, true))
        });
        group.bench_function(BenchmarkId::new("accept_dropped", routes), |b| {
            b.iter_custom(|iters| time_accept(&rt, &module, &bot, iters, false))
        });
        assert!(generation.inflight.is_empty());
        drop(generation);
        unload_module(&rt, registry, module, &dir);
    }
    group.finish();
}

fn route_match(c: &mut Criterion) {
    let rt = runtime();
    let event = webhook_event("team_member");
    let mut group = c.benchmark_group("route_match");
    for routes in ROUTE_COUNTS {
        let dir = scratch(&format!("route_match-{routes}"));
        let (registry, module) = load_module(&rt, &dir, routes);
        let generation = module.current().unwrap();
        let matching = |g: &Generation, e: &Event| {
            g.routes_for(e.source())
                .iter()
                .filter(|&&i| g.routes[i].matches(e, e.event_type()))
                .count()
        };
        assert_eq!(matching(&generation, &event), 1);
        group.bench_function(BenchmarkId::from_parameter(routes), |b| {
            b.iter(|| matching(&generation, black_box(&event)))
        });
        drop(generation);
        unload_module(&rt, registry, module, &dir);
    }
    group.finish();
}

fn rollout(c: &mut Criterion) {
    use orgloop::config::spec::Thresholds;
    use orgloop::module::health::{compare, Health};
    use orgloop::module::rollout::bucket;

    let mut group = c.benchmark_group("rollout");
    let id = orgloop_plugin_sdk::new_event_id();
    group.bench_function("bucket", |b| b.iter(|| bucket(black_box(&id))));
    let health = Health::default();
    group.bench_function("health_attempt", |b| {
        b.iter(|| health.attempt(black_box(false), black_box(Duration::from_micros(700))))
    });
    let (old, new) = (Health::default(), Health::default());
    for i in 0..10_000u64 {
        old.attempt(i % 100 == 0, Duration::from_micros(500 + i % 900));
        new.attempt(i % 50 == 0, Duration::from_micros(600 + i % 700));
        old.transform_call(false);
        new.transform_call(i % 200 == 0);
    }
    let thresholds = Thresholds::default();
    group.bench_function("compare", |b| {
        b.iter(|| compare(&old.snapshot(), &new.snapshot(), black_box(&thresholds)))
    });
    group.finish();
}

criterion_group!(
    benches,
    transform_call,
    actor_call,
    rollout,
    in_process_path,
    route_match
);

/// Criterion's main, and also the plugin process of the `process` cases: the supervisor starts
/// the running binary with `plugin-host <library>`, as the daemon starts itself.
fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("plugin-host") {
        let library = PathBuf::from(args.next().expect("plugin-host <library>"));
        std::process::exit(match orgloop::plugin::process::child::run(&library) {
            c if c == std::process::ExitCode::SUCCESS => 0,
            _ => 1,
        });
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
