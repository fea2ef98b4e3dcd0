//! The error type of the kernels crate: every bad input or GPU failure becomes one of these,
//! with a message that names what is wrong.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No usable CUDA driver or device (machines without a GPU end up here, never in a panic).
    NoCudaDevice(String),
    /// A device was found but it is not the Hopper part the kernels are built for.
    UnsupportedDevice {
        name: String,
        major: i32,
        minor: i32,
    },
    /// A tensor argument has the wrong shape or length.
    Shape { op: &'static str, detail: String },
    /// A scalar argument is out of its valid range.
    InvalidArgument { op: &'static str, detail: String },
    /// An index (token id, position) is out of range.
    IndexOutOfRange { op: &'static str, detail: String },
    /// A device allocation failed.
    OutOfMemory {
        bytes: usize,
        free: usize,
        total: usize,
    },
    /// A CUDA driver call failed.
    Cuda { context: String, detail: String },
    /// A cuBLAS call failed or cuBLAS is not installed.
    Cublas(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }
    pub fn index(op: &'static str, detail: impl Into<String>) -> Self {
        Error::IndexOutOfRange {
            op,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoCudaDevice(why) => write!(f, "no CUDA device: {why}"),
            Error::UnsupportedDevice { name, major, minor } => write!(
                f,
                "unsupported GPU {name} (compute capability {major}.{minor}): the kernels are \
                 built for sm_90a (H100 / H200)"
            ),
            Error::Shape { op, detail } => write!(f, "{op}: wrong shape: {detail}"),
            Error::InvalidArgument { op, detail } => write!(f, "{op}: invalid argument: {detail}"),
            Error::IndexOutOfRange { op, detail } => {
                write!(f, "{op}: index out of range: {detail}")
            }
            Error::OutOfMemory { bytes, free, total } => write!(
                f,
                "GPU out of memory: cannot allocate {bytes} bytes ({free} of {total} bytes free)"
            ),
            Error::Cuda { context, detail } => write!(f, "CUDA error in {context}: {detail}"),
            Error::Cublas(detail) => write!(f, "cuBLAS: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// Checks that a slice has `expected` elements; `what` names the argument in the error.
pub fn check_len(op: &'static str, what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::shape(
            op,
            format!("{what} has {len} elements, expected {expected}"),
        ));
    }
    Ok(())
}
