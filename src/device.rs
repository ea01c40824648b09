//! `--device cpu|cuda[:i]`, picked at run time.

use candle_core::Device;

/// Parses a device name; CUDA needs a build with `--features cuda`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("device {name:?}: expected cpu, cuda or cuda:<index>")
                    })?,
                None => anyhow::bail!("device {name:?}: expected cpu, cuda or cuda:<index>"),
            };
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device {name}: this vmt-hub was built without CUDA (rebuild with `cargo build --release --features cuda`)"
                );
            }
            Ok(Device::new_cuda(ordinal)?)
        }
    }
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
