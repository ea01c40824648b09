//! `--device cpu|cuda[:i]`, picked at run time.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device name; CUDA needs a build with `--features cuda`.
///
/// # Errors
/// [`Error::Invalid`] for a name of no device, or CUDA in a build without it.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| bad(name))?,
                None => return Err(bad(name)),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Invalid(format!(
                    "device {name}: this vmt-hub was built without CUDA (rebuild with `cargo build --release --features cuda`)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

fn bad(name: &str) -> Error {
    Error::Invalid(format!(
        "device {name:?}: expected cpu, cuda or cuda:<index>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("expected cpu, cuda"), "{err}");
        assert!(parse_device("cuda:x").is_err());
    }
}
