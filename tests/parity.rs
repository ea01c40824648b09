//! The candle model equals the PyTorch reference on tests/fixtures: outputs, generic
//! stage features, losses and gradients, within the fixtures' tolerances.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use common::{assert_close, assert_grad_close, fixtures};
use vmt_hub::model::loss::target_from_tensor;
use vmt_hub::model::{task_loss, Backbone, NamedTensors};
use vmt_hub::train::trainable;
use vmt_registry::bundle::BundleDir;

fn check_case(case: &str) {
    let dir = fixtures().join(case);
    let dev = Device::Cpu;
    let backbone = Backbone::load(dir.join("backbone").to_str().unwrap(), &dev).unwrap();
    let bundle = BundleDir::read(&dir.join("bundle")).unwrap();
    // Every bundle tensor becomes a Var (as in training) so gradients can be read back.
    let (model, opt) =
        trainable(&bundle.config, &backbone, &bundle.tensors, 0.0, |_| true).unwrap();
    let vars: HashMap<String, Var> = opt
        .params
        .iter()
        .map(|p| (p.name.clone(), p.var.clone()))
        .collect();

    let input = NamedTensors::load(&dir.join("input.safetensors"), &dev).unwrap();
    let expected = NamedTensors::load(&dir.join("expected.safetensors"), &dev).unwrap();
    let exp = |name: &str| {
        expected
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
            .clone()
    };
    let pixels = input.tensors["pixel_values"].clone();
    let out = model.forward(&pixels).unwrap();

    for (i, f) in out.features.iter().enumerate() {
        let name = format!("features.stage{i}");
        assert_close(&name, f, &exp(&name), 1e-4, 1e-4);
    }
    let mut total: Option<Tensor> = None;
    for task in &bundle.config.tasks {
        let pred = out.task(&task.name).unwrap();
        assert_close(&task.name, pred, &exp(&task.name), 1e-4, 1e-4);
        let target = target_from_tensor(
            task.kind,
            input.tensors[&format!("targets.{}", task.name)].clone(),
            &dev,
        )
        .unwrap();
        let loss = task_loss(task.kind, &task.name, pred, &target).unwrap();
        let name = format!("loss.{}", task.name);
        assert_close(&name, &loss.reshape(1).unwrap(), &exp(&name), 1e-4, 1e-4);
        total = Some(match total {
            Some(t) => (t + loss).unwrap(),
            None => loss,
        });
    }
    let grads = total.unwrap().backward().unwrap();
    let mut checked = 0;
    for (name, want) in &expected.tensors {
        let Some(var_name) = name.strip_prefix("grad.") else {
            continue;
        };
        let var = vars
            .get(var_name)
            .unwrap_or_else(|| panic!("no tensor {var_name}"));
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{var_name} received no gradient"));
        assert_grad_close(name, got, want, 1e-3);
        checked += 1;
    }
    assert!(checked > 0, "the fixture has no gradients to compare");
}

#[test]
fn tiny_matches_reference() {
    check_case("tiny");
}

#[test]
fn tiny_lite_matches_reference() {
    check_case("tiny-lite");
}
