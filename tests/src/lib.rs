//! ublkvd's integration tests. The host tests (`tests/`) drive the real
//! daemon and CLI where the kernel has no ublk; the VM end-to-end suite
//! (`vm/`), which needs `/dev/ublkbN`, boots a kernel that has it.

pub mod netns;
