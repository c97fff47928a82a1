//! Test fixtures, apart from the product: sample VMs (for tests, benches and the demo) and fault
//! injection (`LEAFD_FAULT`, which the crash and durability tests set).

pub mod fault;
pub mod sample;
