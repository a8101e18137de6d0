//! The exception hierarchy seen from Python. Every error is a `ValueError` subclass so callers that
//! only care about "bad input" can catch one type, while tests and the gateway can tell them apart.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    _core,
    CoreError,
    PyValueError,
    "Base class of every error raised by icgw's core."
);
create_exception!(
    _core,
    CborError,
    CoreError,
    "Malformed, oversized or unsupported CBOR."
);
create_exception!(
    _core,
    PrincipalError,
    CoreError,
    "An invalid principal (bytes or text)."
);
create_exception!(
    _core,
    RequestIdError,
    CoreError,
    "A value that has no representation-independent hash."
);
create_exception!(_core, HashTreeError, CoreError, "A malformed hash tree.");
create_exception!(
    _core,
    CertificateError,
    CoreError,
    "A certificate that does not verify."
);
create_exception!(_core, SignatureError, CoreError, "A malformed key or signature.");
create_exception!(
    _core,
    EnvelopeError,
    CoreError,
    "An envelope the IC would reject."
);
create_exception!(
    _core,
    CandidError,
    CoreError,
    "Malformed Candid, or Candid of the wrong type."
);
create_exception!(
    _core,
    FrameError,
    CoreError,
    "A WebSocket frame that breaks the IC WebSocket protocol."
);
create_exception!(
    _core,
    MessagesError,
    CoreError,
    "A ws_get_messages reply that cannot be relayed."
);

/// Declare a plain-message error type of the core that becomes the given Python exception at the
/// boundary. Every module's error is a message for humans and logs; only the Python class differs.
#[macro_export]
macro_rules! message_error {
    ($(#[$meta:meta])* $name:ident => $py:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}

        impl From<$name> for pyo3::PyErr {
            fn from(e: $name) -> pyo3::PyErr {
                <$py>::new_err(e.0)
            }
        }
    };
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("CborError", py.get_type::<CborError>())?;
    m.add("PrincipalError", py.get_type::<PrincipalError>())?;
    m.add("RequestIdError", py.get_type::<RequestIdError>())?;
    m.add("HashTreeError", py.get_type::<HashTreeError>())?;
    m.add("CertificateError", py.get_type::<CertificateError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("EnvelopeError", py.get_type::<EnvelopeError>())?;
    m.add("CandidError", py.get_type::<CandidError>())?;
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("MessagesError", py.get_type::<MessagesError>())?;
    Ok(())
}
