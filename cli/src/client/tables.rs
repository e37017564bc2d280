//! The tables and screens the client commands print: `list`, `members`,
//! `store`.

use anyhow::Context;

use crate::control::{MembersInfo, StoreInfo, VdiskInfo};

use super::size::format_size;
use super::status;

/// The one vdisk a change reports, as a JSON object.
pub fn print_one(vdisks: &[VdiskInfo]) -> anyhow::Result<()> {
    let vdisk = vdisks
        .first()
        .context("the daemon reported no vdisk for the change")?;
    println!("{}", serde_json::to_string_pretty(vdisk)?);
    Ok(())
}

pub fn print_members(info: &MembersInfo) {
    let join = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let rows: Vec<Vec<String>> = info
        .members
        .iter()
        .map(|m| {
            let name = if m.is_self {
                format!("{} (this node)", m.name)
            } else {
                m.name.clone()
            };
            let state = serde_json::to_value(m.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            vec![
                name,
                state,
                m.incarnation.to_string(),
                m.gossip.to_string(),
                join(m.links.iter().map(ToString::to_string).collect()),
                join(m.tails.clone()),
                m.version.clone(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "STATE",
        "INCARNATION",
        "GOSSIP",
        "LINKS",
        "TAILS",
        "VERSION",
    ];
    print_rows(&header, &rows);
    println!("configuration number {}", info.config_number);
    for line in status::gossip_drops(info) {
        println!("{line}");
    }
}

pub fn print_store(store: &StoreInfo) {
    println!("role        {} (term {})", store.role, store.term);
    println!(
        "leader      {}",
        store.leader.as_deref().unwrap_or("none known")
    );
    println!("generation  {}", store.generation);
    println!(
        "log         last index {}, applied {}",
        store.last_log_index, store.last_applied
    );
    println!("voters      {}", store.voters.join(", "));
    if !store.learners.is_empty() {
        println!("learners    {}", store.learners.join(", "));
    }
    if let Some(differ) = status::configured_voters_differ(store) {
        println!("note        {differ}");
    }
}

pub fn print_table(vdisks: &[VdiskInfo]) {
    let rows: Vec<Vec<String>> = vdisks
        .iter()
        .map(|v| {
            let state = match &v.moving_to {
                Some(to) => format!("{} (moving to {to})", v.state),
                None => v.state.clone(),
            };
            vec![
                v.name.clone(),
                format_size(v.size_bytes),
                v.device
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |d| d.display().to_string()),
                placement(v),
                v.epoch.to_string(),
                format!("{}:{} {:04o}", v.owner, v.group, v.mode),
                state,
            ]
        })
        .collect();
    print_rows(
        &["NAME", "SIZE", "DEVICE", "TAIL", "EPOCH", "ACCESS", "STATE"],
        &rows,
    );
}

/// A table with columns as wide as their widest cell.
fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// A vdisk's tails for the table: the local path, or the cluster tails
/// with the path now serving marked by `*`.
fn placement(v: &VdiskInfo) -> String {
    if let Some(tail) = &v.tail {
        return match &v.node {
            Some(node) => format!("{node}:{}", tail.display()),
            None => tail.display().to_string(),
        };
    }
    if let (Some(primary), Some(mirror)) = (&v.primary, &v.mirror) {
        let copy = v.mirror_copy.as_deref().unwrap_or("unknown");
        return format!("{primary}<->{mirror} (mirror {copy})");
    }
    let tails: Vec<String> = v
        .primary
        .iter()
        .chain(&v.secondary)
        .map(ToString::to_string)
        .collect();
    let unreachable: Vec<&str> = v
        .paths
        .iter()
        .filter(|p| !p.reachable)
        .map(|p| p.name.as_str())
        .collect();
    if unreachable.is_empty() {
        tails.join(",")
    } else {
        format!(
            "{} (unreachable: {})",
            tails.join(","),
            unreachable.join(",")
        )
    }
}
