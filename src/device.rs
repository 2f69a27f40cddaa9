//! Device names as written in the config: `auto`, `cpu`, `cuda`, `cuda:N`.
use tch::Device;

/// Parses a device name. `auto` is CUDA device 0 when libtorch sees a GPU, CPU otherwise.
///
/// ```
/// assert_eq!(saln::device::parse("cpu"), Ok(tch::Device::Cpu));
/// assert_eq!(saln::device::parse("cuda:1"), Ok(tch::Device::Cuda(1)));
/// assert!(saln::device::parse("tpu").is_err());
/// ```
pub fn parse(name: &str) -> Result<Device, String> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => Err(format!(
                "unknown device `{other}`: expected auto, cpu, cuda or cuda:N"
            )),
        },
    }
}

/// Checks that `device` can be used here: a CUDA device must exist.
pub fn check(device: Device) -> Result<(), String> {
    match device {
        Device::Cuda(n) if n >= tch::Cuda::device_count() as usize => Err(format!(
            "cuda:{n} requested but libtorch sees {} CUDA device(s)",
            tch::Cuda::device_count()
        )),
        _ => Ok(()),
    }
}

/// A printable name (`cpu`, `cuda:0`).
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
