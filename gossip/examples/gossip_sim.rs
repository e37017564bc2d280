//! Runs one simulated cluster (gossip::sim) and prints what it measured:
//! bootstrap convergence, steady-state messages per member per second,
//! detection-to-all of killed members, and false down verdicts.
//!
//! cargo run --release -p gossip --example gossip_sim -- --nodes 1000 --loss 0.05
//!
//! Options (defaults in brackets): --nodes [10], --loss [0], --seed [1],
//! --kills [3], --window [30] (s of steady state for the message rate),
//! --seconds [300] (s of the long run after the kills), --latency-us
//! MIN,MAX [100,1000], --probe-period-ms, --probe-rtt-ms, --suspect-ms,
//! --gossip-ms [gossip::Timing's defaults], --markdown (print a table row).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gossip::sim::{Sim, SimConfig};
use gossip::Timing;

/// How long after convergence the news of the joins may still be spreading.
const SETTLE: Duration = Duration::from_secs(30);

struct Args {
    sim: SimConfig,
    kills: usize,
    window: Duration,
    long_run: Duration,
    markdown: bool,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("gossip_sim: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = args.sim.timing.check() {
        eprintln!("gossip_sim: {error}");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let nodes = args.sim.nodes;
    let mut sim = Sim::new(args.sim.clone());

    let Some(converged) = sim.run_until_converged(Duration::from_secs(600)) else {
        eprintln!("gossip_sim: no convergence within 600 s");
        return ExitCode::FAILURE;
    };

    // Steady state: once the joins' news has been passed on its last time,
    // only probes and periodic announces remain.
    sim.run_until(converged + SETTLE);
    let before = sim.counters();
    sim.run_until(converged + SETTLE + args.window);
    let after = sim.counters();
    let member_seconds = nodes as f64 * args.window.as_secs_f64();
    let packets_rate = (after.packets - before.packets) as f64 / member_seconds;
    let bytes_rate = (after.bytes - before.bytes) as f64 / member_seconds;

    // Kills spread over the members, one at a time: each is seen by all
    // before the next, and the news has 10 s to die down.
    let mut detections = Vec::new();
    let mut undetected = 0;
    for kill in 0..args.kills {
        let victim = (kill + 1) * nodes / (args.kills + 1);
        sim.kill(victim);
        let limit = sim.now() + Duration::from_secs(60);
        match sim.run_until_detected(victim, limit) {
            Some(after) => detections.push(after),
            None => undetected += 1,
        }
        sim.run_until(sim.now() + Duration::from_secs(10));
    }
    sim.run_until(sim.now() + args.long_run);

    detections.sort();
    let seconds = |d: Duration| format!("{:.2}", d.as_secs_f64());
    let detection = match (detections.first(), detections.last()) {
        (Some(&min), Some(&max)) => {
            let median = detections[detections.len() / 2];
            format!(
                "{} / {} / {} s",
                seconds(min),
                seconds(median),
                seconds(max)
            )
        }
        _ => "-".into(),
    };
    let detection = if undetected > 0 {
        format!("{detection} ({undetected} undetected in 60 s)")
    } else {
        detection
    };
    let counters = sim.counters();
    let observed = sim.now() - converged;
    let wall = started.elapsed();
    if args.markdown {
        println!(
            "| {nodes} | {}% | {} s | {packets_rate:.2} | {bytes_rate:.0} | {detection} | {} ({} rejoins) | {} s | {:.0} s |",
            args.sim.loss * 100.0,
            seconds(converged),
            counters.false_downs,
            counters.rejoins,
            observed.as_secs(),
            wall.as_secs_f64(),
        );
    } else {
        println!(
            "nodes={nodes} loss={} seed={} converged={}s packets/member/s={packets_rate:.2} \
             bytes/member/s={bytes_rate:.0} detection(min/median/max)={detection} \
             false_downs={} rejoins={} foca_errors={} observed={}s wall={:.1}s",
            args.sim.loss,
            args.sim.seed,
            seconds(converged),
            counters.false_downs,
            counters.rejoins,
            counters.foca_errors,
            observed.as_secs(),
            wall.as_secs_f64(),
        );
    }
    ExitCode::SUCCESS
}

fn parse(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        sim: SimConfig {
            nodes: 10,
            seed: 1,
            loss: 0.0,
            latency: (Duration::from_micros(100), Duration::from_millis(1)),
            timing: Timing::default(),
        },
        kills: 3,
        window: Duration::from_secs(30),
        long_run: Duration::from_secs(300),
        markdown: false,
    };
    while let Some(flag) = words.next() {
        if flag == "--markdown" {
            args.markdown = true;
            continue;
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a whole number: {value}"))
        };
        let millis = || number().map(Duration::from_millis);
        match flag.as_str() {
            "--nodes" => args.sim.nodes = number()? as usize,
            "--seed" => args.sim.seed = number()?,
            "--kills" => args.kills = number()? as usize,
            "--window" => args.window = Duration::from_secs(number()?),
            "--seconds" => args.long_run = Duration::from_secs(number()?),
            "--probe-period-ms" => args.sim.timing.probe_period = millis()?,
            "--probe-rtt-ms" => args.sim.timing.probe_rtt = millis()?,
            "--suspect-ms" => args.sim.timing.suspect_to_down = millis()?,
            "--gossip-ms" => args.sim.timing.gossip_interval = millis()?,
            "--loss" => {
                args.sim.loss = value
                    .parse::<f64>()
                    .ok()
                    .filter(|loss| (0.0..=1.0).contains(loss))
                    .ok_or(format!("--loss: not a probability: {value}"))?;
            }
            "--latency-us" => {
                let (min, max) = value
                    .split_once(',')
                    .and_then(|(min, max)| Some((min.parse().ok()?, max.parse().ok()?)))
                    .filter(|(min, max)| min <= max)
                    .ok_or(format!("--latency-us: not MIN,MAX: {value}"))?;
                args.sim.latency = (Duration::from_micros(min), Duration::from_micros(max));
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if args.sim.nodes < 2 || args.kills >= args.sim.nodes {
        return Err("need at least 2 nodes and fewer kills than nodes".into());
    }
    Ok(args)
}
