//! Plan benchmark: a generated fleet of 100, 1,000 and 10,000 resources planned against the
//! simulated cloud with zero latency, empty and fully applied.
//!
//! Reports per size the engine time (load, validate, expand, render, diff, graph, format), the
//! discovery time (the simulator's list calls, read from disk), and peak memory. Each size
//! runs in its own process so peak memory is that size's alone.
//!
//!   cargo bench --bench plan            # table on stdout; copy it into BENCHMARKS.md
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_engine::apply::{self, ApplyOptions, Providers, Quiet};
use fleet_engine::ops::{self, PlanOptions};
use fleet_engine::plan::display::{self, TextOptions};
use fleet_engine::provider::Cloud;
use fleet_engine::{graph, spec};
use fleet_providers::sim::{SimCloud, SimConfig};

/// A fleet file with `size` resources: 8 templates, managers on GCP using them, a pool on AWS.
/// The benchmark's fleets put up to 50,000 managers in one matrix: past the default limit of
/// 10,000 a matrix, raised here as an operator would with `--max-pool-size`.
fn bench_limits() -> spec::Limits {
    spec::Limits {
        pool_size: 100_000,
        matrix_combinations: 100_000,
        ..spec::Limits::default()
    }
}

fn generate(size: usize) -> String {
    let templates = 8;
    let managers = (size - templates) / 2;
    let pool = size - templates - managers;
    format!(
        "fleet: bench
clouds:
  gcp: {{project: bench, region: us-east1}}
  aws: {{region: us-east-1}}
defaults:
  gcp: {{zone: us-east1-c, image: ubuntu-2204, disk: {{type: pd-ssd, size_gb: 50}}}}
  aws: {{zone: us-east-1a, image: ami-1, disk: {{type: gp3, size_gb: 100}}}}
templates:
  t-{{kind}}:
    matrix: {{kind: [a, b, c, d, e, f, g, h]}}
    cloud: gcp
    machine_type: n1-highcpu-32
    arch: amd64
managers:
  m-{{n}}:
    matrix: {{count: {managers}}}
    cloud: gcp
    zone: us-east1-d
    machine_type: n1-standard-4
    labels: {{team: bench}}
    runner: {{version: \"16.11.1\", concurrent: 10}}
    runners:
      - name: r-{{n}}-a
        template: t-a
        arch: amd64
      - name: r-{{n}}-b
        template: t-b
        arch: amd64
pools:
  b-{{n}}:
    size: {pool}
    cloud: aws
    machine_type: m6g.2xlarge
"
    )
}

struct Measure {
    engine: Duration,
    discovery: Duration,
    changes: usize,
}

async fn plan_once(text: &str, providers: &Providers) -> Measure {
    let started = Instant::now();
    let desired = spec::compile_with("bench.yaml", text, &bench_limits())
        .expect("the generated fleet is valid");
    let compiled = started.elapsed();
    let discovery_started = Instant::now();
    let (plan, _) = ops::plan(&desired, providers, &PlanOptions::default())
        .await
        .expect("plan");
    let planned = discovery_started.elapsed();
    let format_started = Instant::now();
    let steps = graph::build(&plan);
    let text = display::text(&plan, TextOptions::default());
    let json = plan.to_json();
    std::hint::black_box((steps.step_count(), text.len(), json.len()));
    let formatted = format_started.elapsed();
    // ops::plan is discovery plus diff; the diff share is measured apart from the listing by
    // timing discovery alone.
    let list_started = Instant::now();
    let clouds = ops::scope_clouds(&desired, None);
    ops::discover(&desired, providers, &clouds)
        .await
        .expect("discover");
    let discovery = list_started.elapsed();
    Measure {
        engine: compiled + planned.saturating_sub(discovery) + formatted,
        discovery,
        changes: plan.summary.create + plan.summary.no_op,
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn providers_for(dir: &std::path::Path) -> (SimCloud, Providers) {
    let sim = SimCloud::open(dir, SimConfig::default()).unwrap();
    let mut providers = Providers::new();
    for cloud in Cloud::ALL {
        providers.insert(sim.provider(cloud));
    }
    (sim, providers)
}

/// Plans against an empty simulated cloud, then applies, leaving the cloud in `dir`.
fn empty_then_apply(size: usize, dir: &std::path::Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_sim, providers) = providers_for(dir);
        let text = generate(size);
        let empty = plan_once(&text, &providers).await;
        println!(
            "EMPTY {} {:.3} {:.3} {:.1}",
            empty.changes,
            empty.engine.as_secs_f64(),
            empty.discovery.as_secs_f64(),
            peak_rss_mb()
        );
        let desired = spec::compile_with("bench.yaml", &text, &bench_limits()).unwrap();
        let (plan, _) = ops::plan(&desired, &providers, &PlanOptions::default())
            .await
            .unwrap();
        let steps = graph::build(&plan);
        let report = apply::execute(
            &plan,
            &steps,
            &providers,
            &ApplyOptions::default(),
            Arc::new(Quiet),
        )
        .await;
        assert!(report.is_success());
    });
}

/// Plans, in a fresh process, against the applied fleet in `dir`: every resource a no-op.
fn plan_applied(size: usize, dir: &std::path::Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_sim, providers) = providers_for(dir);
        let applied = plan_once(&generate(size), &providers).await;
        println!(
            "APPLIED {:.3} {:.3} {:.1}",
            applied.engine.as_secs_f64(),
            applied.discovery.as_secs_f64(),
            peak_rss_mb()
        );
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--empty" || a == "--applied") {
        let size = args[position + 1].parse().expect("size");
        let dir = std::path::Path::new(&args[position + 2]);
        match args[position].as_str() {
            "--empty" => empty_then_apply(size, dir),
            _ => plan_applied(size, dir),
        }
        return;
    }
    println!("| resources | engine, empty cloud | discovery, empty | peak RSS, empty | engine, applied fleet | discovery, applied (disk) | peak RSS, applied |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in [100, 1_000, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim_dir = dir.path().join("sim");
        let run = |flag: &str| {
            let output = Command::new(&args[0])
                .args([flag, &size.to_string(), sim_dir.to_str().unwrap()])
                .output()
                .expect("run one phase");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let fields: Option<Vec<String>> = text
                .lines()
                .find(|l| l.starts_with("EMPTY ") || l.starts_with("APPLIED "))
                .map(|l| l.split_whitespace().map(str::to_string).collect());
            fields.ok_or_else(|| {
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()
            })
        };
        match (run("--empty"), run("--applied")) {
            (Ok(e), Ok(a)) => println!(
                "| {size} | {} s | {} s | {} MB | {} s | {} s | {} MB |",
                e[2], e[3], e[4], a[1], a[2], a[3]
            ),
            (Err(error), _) | (_, Err(error)) => println!("| {size} | failed: {error} |"),
        }
    }
}
