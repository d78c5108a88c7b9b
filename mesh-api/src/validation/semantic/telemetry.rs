//! Semantic checks of telemetry.istio.io `Telemetry`, after Istio's `ValidateTelemetry`.

use super::*;
use crate::telemetry::*;

pub(crate) fn telemetry(spec: &TelemetrySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    check_selector_xor_target_ref(
        &mut errs,
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    );
    if let Some(sel) = &spec.selector {
        check_workload_selector(&mut errs, "spec.selector", sel);
    }
    for (i, t) in spec.tracing.iter().enumerate() {
        let p = format!("spec.tracing[{i}]");
        providers(&mut errs, &p, &t.providers);
        if let Some(pct) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&pct)
        {
            errs.add(
                format!("{p}.randomSamplingPercentage"),
                format!("percentage {pct} must be in the range 0..100"),
            );
        }
        for (name, tag) in &t.custom_tags {
            let tp = format!("{p}.customTags[{name}]");
            let set = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
            ];
            match set.iter().filter(|s| **s).count() {
                1 => {}
                0 => errs.add(&tp, "one of literal, environment or header is required"),
                _ => errs.add(&tp, "only one of literal, environment or header may be set"),
            }
            if let Some(e) = &tag.environment
                && e.name.is_empty()
            {
                errs.add(format!("{tp}.environment.name"), "name is required");
            }
            if let Some(h) = &tag.header {
                errs.check(format!("{tp}.header.name"), check_header_name(&h.name));
            }
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let p = format!("spec.metrics[{i}]");
        providers(&mut errs, &p, &m.providers);
        if let Some(d) = &m.reporting_interval {
            check_duration(&mut errs, &format!("{p}.reportingInterval"), d, MIN_1MS);
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let op = format!("{p}.overrides[{j}]");
            if let Some(sel) = &o.r#match
                && sel.metric.is_some()
                && sel.custom_metric.is_some()
            {
                errs.add(
                    format!("{op}.match"),
                    "only one of metric or customMetric may be set",
                );
            }
            for (tag, t) in &o.tag_overrides {
                let tp = format!("{op}.tagOverrides[{tag}]");
                if tag.is_empty() {
                    errs.add(&tp, "tag name must not be empty");
                }
                match (t.operation.unwrap_or_default(), &t.value) {
                    (TagOperation::Upsert, None) => {
                        errs.add(format!("{tp}.value"), "value is required for UPSERT")
                    }
                    (TagOperation::Remove, Some(_)) => {
                        errs.add(format!("{tp}.value"), "value must not be set for REMOVE")
                    }
                    _ => {}
                }
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        let p = format!("spec.accessLogging[{i}]");
        providers(&mut errs, &p, &a.providers);
        if let Some(f) = &a.filter
            && f.expression.trim().is_empty()
        {
            errs.add(
                format!("{p}.filter.expression"),
                "filter expression must not be empty",
            );
        }
    }
    errs.0
}

fn providers(errs: &mut Errors, path: &str, providers: &[ProviderRef]) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            errs.add(
                format!("{path}.providers[{i}].name"),
                "provider name is required",
            );
        }
    }
}
