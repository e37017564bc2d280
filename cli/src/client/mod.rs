//! The client commands' side: how results print (`status`, `resync`,
//! `verify`, the tables), sizes as users write them, and exit statuses.

pub mod exit;
pub mod mirror;
pub mod size;
pub mod status;
pub mod tables;
