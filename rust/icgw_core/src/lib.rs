//! icgw's compiled core: pure functions over bytes, no I/O, no Python objects kept between calls.
//!
//! Each module owns one concern and registers its Python-facing functions through `register`.
//! Python reaches all of this only through `icgw.core` (the typed facade).

use pyo3::prelude::*;

pub mod bls;
pub mod candid_ws;
pub mod cbor;
pub mod certificate;
pub mod envelope;
pub mod errors;
pub mod fanout;
pub mod frames;
pub mod hash;
pub mod hash_tree;
pub mod identity;
pub mod principal;
pub mod request_id;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    cbor::register(m)?;
    principal::register(m)?;
    request_id::register(m)?;
    hash_tree::register(m)?;
    bls::register(m)?;
    certificate::register(m)?;
    identity::register(m)?;
    envelope::register(m)?;
    candid_ws::register(m)?;
    frames::register(m)?;
    fanout::register(m)?;
    Ok(())
}
