//! Records for the unit tests of the pure policies (`node/plan.rs`,
//! `moves/failover.rs`).

use configdb::{MirrorCopy, Permissions, Placement, TailRef, VdiskName, VdiskRecord, VdiskSpec};

pub fn tail(text: &str) -> TailRef {
    TailRef::try_from(text.to_owned()).unwrap()
}

/// Vdisk `name` of 1 GiB on `placement`, with device number `id`, at
/// `epoch`, its mirror copy (if any) current.
pub fn record(name: &str, placement: Placement, id: u32, epoch: u64) -> VdiskRecord {
    VdiskRecord {
        spec: VdiskSpec {
            name: VdiskName::try_from(name.to_owned()).unwrap(),
            size_bytes: 1 << 30,
            placement,
            block_size: 4096,
            queues: 1,
            queue_depth: 64,
            read_only: false,
            permissions: Permissions::default(),
            multi_writer: false,
        },
        id,
        epoch,
        moving: None,
        mirror_copy: MirrorCopy::Current,
        writer: None,
    }
}

/// Vdisk `name` whose primary is `a:d0` and secondary `b:d0`.
pub fn twin(name: &str, id: u32, epoch: u64) -> VdiskRecord {
    let placement = Placement::Cluster {
        primary: tail("a:d0"),
        secondary: Some(tail("b:d0")),
    };
    record(name, placement, id, epoch)
}
