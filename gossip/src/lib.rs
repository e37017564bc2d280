//! Cluster membership for ublkvd: SWIM gossip over UDP (foca) and the
//! metadata each node announces.
//!
//! Empty until the membership issue lands: a single node needs no gossip.
