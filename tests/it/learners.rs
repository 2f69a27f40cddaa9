//! `trainer.model`: a ResNet and a TorchScript module as the learner, trained end to end by
//! `pipeline::run`, and the saved ResNet read back by the project venv's PyTorch.
use std::path::{Path, PathBuf};
use std::process::Command;

use saln::config::PipelineConfig;
use saln::model::learner::{Learner, LearnerSpec, ResNetLearnerConfig};
use saln::model::resnet::{ResNetArch, Stem};
use saln::pipeline::{self, Cancel};
use tch::{Device, Kind, Tensor};

use super::common::synthetic_idx;

/// The project venv's Python (`make test` creates it with torch and torchvision).
fn python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/saln/venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{}: missing; run `make test` (it makes the venv with torch and torchvision)",
        py.display()
    );
    py
}

/// Runs `script` (from a file: `torch.jit.script` reads the source) with `args`.
fn run_python(script: &str, args: &[&Path]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(python())
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn config(dir: &Path, trainer: &str, policy: &str) -> PipelineConfig {
    parse(dir, trainer, policy).unwrap()
}

fn parse(dir: &Path, trainer: &str, policy: &str) -> saln::Result<PipelineConfig> {
    let data = synthetic_idx(dir, 256, 64);
    let yaml = format!(
        r#"
seed: 5
device: cpu
source:
  idx: {{ dir: {data} }}
  holdout: 0
augment:
  workers: 2
  ops:
    - normalize: {{ mean: [0.2], std: [0.3] }}
superbatch: {{ size: 32, prefetch: 2 }}
selection: {{ policy: {policy}, keep_ratio: 0.5 }}
trainer:
{trainer}
report:
  path: {report}
  progress_seconds: 0
"#,
        data = data.display(),
        report = dir.join("report.json").display()
    );
    PipelineConfig::from_yaml_str(&yaml, "learners.yaml")
}

/// Deterministic images for comparing logits across the two frameworks.
const INPUT: &str =
    "torch.sin(torch.arange(3 * 1 * 16 * 16, dtype=torch.float32) * 0.37).reshape(3, 1, 16, 16)";

#[test]
fn a_resnet_learner_trains_and_torchvision_loads_what_it_saved() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("learner.safetensors");
    let trainer = format!(
        r#"  epochs: 3
  model: resnet
  resnet: {{ arch: resnet18, stem: small }}
  optimizer: {{ kind: sgd, momentum: 0.9, nesterov: true, weight_decay: 0.0005 }}
  lr: 0.05
  warmup: 0.1
  lr_schedule: cosine
  label_smoothing: 0.1
  grad_clip: 5.0
  save: {}"#,
        saved.display()
    );
    let cfg = config(dir.path(), &trainer, "none");
    let report = pipeline::run(&cfg, Cancel::default(), None).unwrap();
    let acc = report.final_test_accuracy.unwrap();
    // Four classes of bars (of the IDX format's ten): chance is 0.25. Three short epochs of a ResNet-18 get far above.
    assert!(acc > 0.6, "accuracy {acc}: {:?}", report.epochs);

    // torchvision's ResNet-18 with the small stem loads the file strictly and gives the
    // logits saln's learner, rebuilt from the same file, gives.
    let script = format!(
        r#"
import sys, json, torch, torchvision
from safetensors.torch import load_file
m = torchvision.models.resnet18(num_classes=10)
m.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
m.maxpool = torch.nn.Identity()
m.load_state_dict(load_file(sys.argv[1]), strict=True)
m.eval()
with torch.no_grad():
    print(json.dumps(m({INPUT}).flatten().tolist()))
"#
    );
    let theirs: Vec<f64> = serde_json::from_str(run_python(&script, &[&saved]).trim()).unwrap();
    let spec = LearnerSpec::ResNet(ResNetLearnerConfig {
        arch: ResNetArch::Resnet18,
        stem: Stem::Small,
        weights: Some(saved.clone()),
    });
    let mut learner = Learner::build(&spec, (1, 16, 16), 10, 0, Device::Cpu).unwrap();
    learner.set_train(false).unwrap();
    let x = (Tensor::arange(3 * 16 * 16, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .reshape([3, 1, 16, 16]);
    let ours: Vec<f64> = {
        let _g = tch::no_grad_guard();
        let l = learner.forward(&x).unwrap().to_kind(Kind::Double);
        Vec::<f64>::try_from(l.flatten(0, -1)).unwrap()
    };
    assert_eq!(ours.len(), 30);
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-4,
        "max |saln - torchvision| = {diff}: {ours:?} vs {theirs:?}"
    );
    // The learner trained: its logits are not those of a fresh initialisation.
    let fresh_spec = LearnerSpec::ResNet(ResNetLearnerConfig {
        arch: ResNetArch::Resnet18,
        stem: Stem::Small,
        weights: None,
    });
    let fresh = Learner::build(&fresh_spec, (1, 16, 16), 10, 5, Device::Cpu).unwrap();
    let fresh_state = fresh.state_dict(0).unwrap();
    let trained_state = learner.state_dict(0).unwrap();
    let moved = fresh_state
        .iter()
        .zip(&trained_state)
        .filter(|((n, a), (_, b))| n.ends_with("conv1.weight") && !a.equal(b))
        .count();
    assert!(moved > 0, "no convolution changed in training");
}

#[test]
fn a_torchscript_learner_trains_through_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("net.pt");
    let saved = dir.path().join("trained.pt");
    let script = r#"
import sys, torch
torch.manual_seed(0)
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)
    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))
torch.jit.script(Net()).save(sys.argv[1])
"#;
    run_python(script, &[&module]);
    let trainer = format!(
        "  epochs: 3\n  model: torchscript\n  torchscript: {{ path: {} }}\n  \
         optimizer: {{ kind: adamw, weight_decay: 0.01 }}\n  lr: 0.003\n  save: {}",
        module.display(),
        saved.display()
    );
    let cfg = config(dir.path(), &trainer, "uniform");
    let report = pipeline::run(&cfg, Cancel::default(), None).unwrap();
    let acc = report.final_test_accuracy.unwrap();
    assert!(acc > 0.6, "accuracy {acc}: {:?}", report.epochs);
    // The saved module holds the trained parameters, not the initial ones.
    let check = r#"
import sys, torch
a, b = torch.jit.load(sys.argv[1]), torch.jit.load(sys.argv[2])
print(max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())))
"#;
    let moved: f64 = run_python(check, &[&module, &saved])
        .trim()
        .parse()
        .unwrap();
    assert!(
        moved > 1e-3,
        "the saved parameters equal the initial ones ({moved})"
    );
}

#[test]
fn learner_config_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Value problems: all reported by parsing, each at its key.
    let problems = |trainer: &str, policy: &str| -> Vec<String> {
        match parse(dir.path(), trainer, policy) {
            Err(saln::Error::ConfigInvalid { issues, .. }) => issues
                .into_iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect(),
            other => panic!("expected a config error, got {other:?}"),
        }
    };
    let p = problems("  model: resnet", "none");
    assert!(p.iter().any(|m| m.starts_with("trainer.resnet: ")), "{p:?}");
    let p = problems(
        "  model: torchscript\n  torchscript: { path: /nowhere/net.pt }",
        "loss",
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("selection.policy: ") && m.contains("TorchScript")),
        "{p:?}"
    );
    let p = problems(
        "  resnet: { arch: resnet18 }\n  optimizer: { kind: adam, nesterov: true }\n  warmup: 1.5\n  lr_milestones: [0.8, 0.3]",
        "none",
    );
    for key in [
        "trainer.resnet: ",
        "trainer.optimizer.nesterov: ",
        "trainer.warmup: ",
        "trainer.lr_milestones: ",
    ] {
        assert!(p.iter().any(|m| m.starts_with(key)), "{key} in {p:?}");
    }
    // A file that is not there: found by the resource check.
    let cfg = config(
        dir.path(),
        "  model: torchscript\n  torchscript: { path: /nowhere/net.pt }",
        "none",
    );
    let p: Vec<String> = cfg
        .check_resources()
        .into_iter()
        .map(|i| format!("{}: {}", i.key, i.message))
        .collect();
    assert!(
        p.iter()
            .any(|m| m.starts_with("trainer.torchscript.path: ") && m.contains("not found")),
        "{p:?}"
    );
}

#[test]
fn a_weights_file_of_another_shape_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // A ResNet-18 for 3-channel images, loaded as the learner of 1-channel images.
    let rgb = Learner::build(
        &LearnerSpec::ResNet(ResNetLearnerConfig {
            arch: ResNetArch::Resnet18,
            stem: Stem::Small,
            weights: None,
        }),
        (3, 16, 16),
        4,
        1,
        Device::Cpu,
    )
    .unwrap();
    let file = dir.path().join("rgb.safetensors");
    rgb.save(&file, 0).unwrap();
    let e = Learner::build(
        &LearnerSpec::ResNet(ResNetLearnerConfig {
            arch: ResNetArch::Resnet18,
            stem: Stem::Small,
            weights: Some(file.clone()),
        }),
        (1, 16, 16),
        4,
        1,
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rgb.safetensors") && e.contains("conv1.weight") && e.contains("[64, 3, 3, 3]"),
        "{e}"
    );
}
