//! The client side of mirrored vdisks: how `resync` and `verify` print.

use std::path::Path;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::control::{self, ResyncInfo, VerifyInfo};

/// How often `resync --watch` asks the daemon.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// One line on a mirror: its state, and a resync's progress.
pub fn describe(info: &ResyncInfo) -> String {
    let copies = format!(
        "{} <-> {} (mirror copy {})",
        info.primary, info.mirror, info.mirror_copy
    );
    match info.state.as_str() {
        "resyncing" => format!(
            "{}: resyncing{} {:.0}% ({} left) at {}/s, ETA {}; {copies}",
            info.vdisk,
            if info.full { " (full)" } else { "" },
            done_percent(info),
            HumanBytes(info.dirty_bytes),
            HumanBytes(info.rate_bytes_per_sec),
            info.eta_secs
                .map_or_else(|| "unknown".to_owned(), |s| format!("{s} s")),
        ),
        "degraded" => format!(
            "{}: degraded, the mirror is unreachable; {} to resync when it returns; {copies}",
            info.vdisk,
            HumanBytes(info.dirty_bytes)
        ),
        state => format!("{}: {state}; {copies}", info.vdisk),
    }
}

/// The share of the resync done, counting what is left against what was
/// copied so far.
fn done_percent(info: &ResyncInfo) -> f64 {
    let total = info.resynced_bytes + info.dirty_bytes;
    if total == 0 {
        100.0
    } else {
        info.resynced_bytes as f64 * 100.0 / total as f64
    }
}

pub fn describe_verify(report: &VerifyInfo) -> String {
    let mut text = format!(
        "{}: {} regions of {} compared",
        report.vdisk,
        report.regions - report.skipped_dirty,
        HumanBytes(report.region_size)
    );
    if report.skipped_dirty > 0 {
        text += &format!(
            ", {} skipped (dirty: the resync will copy them)",
            report.skipped_dirty
        );
    }
    if report.differing.is_empty() {
        text += ": the copies are identical";
    } else {
        let list: Vec<String> = report.differing.iter().map(u64::to_string).collect();
        text += &format!(": regions {} differ", list.join(", "));
    }
    text
}

/// A live progress bar of the resync of `name`, until its copies are in
/// sync.
pub fn watch(socket: &Path, name: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:40}] {bytes}/{total_bytes} at {msg}, ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    loop {
        let info = control::resync(socket, name, false)?;
        bar.set_length(info.resynced_bytes + info.dirty_bytes);
        bar.set_position(info.resynced_bytes);
        bar.set_message(format!("{}/s", HumanBytes(info.rate_bytes_per_sec)));
        if info.state == "in sync" {
            bar.finish_and_clear();
            println!("{}", describe(&info));
            return Ok(());
        }
        if info.state != "resyncing" {
            bar.set_message(info.state.clone());
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}
