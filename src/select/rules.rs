//! Rules that turn the Fiedler vector `v` of a super-batch into `b` kept positions.
//!
//! The paper says only "use the Fiedler vector to select"; these are the readings saln
//! offers. Every rule breaks ties by position, so the result is a pure function of `v`.
use serde::{Deserialize, Serialize};

/// How `b` samples are chosen from the Fiedler vector `v`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The `b` samples with the largest `|v_i|`: the cores of the two spectral clusters.
    Extremes,
    /// The `b` samples with the smallest `|v_i|`: those nearest the spectral cut.
    Boundary,
    /// Split by the sign of `v`; each side gives samples in proportion to its size, largest
    /// `|v_i|` first.
    Balanced,
    /// Sort by `v` and take `b` evenly spaced ranks: covers the whole spectral axis, like
    /// stratified sampling along the graph's main direction.
    #[default]
    Quantile,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 4] = [
        Rule::Extremes,
        Rule::Boundary,
        Rule::Balanced,
        Rule::Quantile,
    ];

    /// The rule's name as written in the YAML and the reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Extremes => "extremes",
            Rule::Boundary => "boundary",
            Rule::Balanced => "balanced",
            Rule::Quantile => "quantile",
        }
    }

    /// The order in which the rule looks at samples, as a sort key of `v_i` (lower first,
    /// ties by position): by `-|v|` (extremes, balanced), `|v|` (boundary) or `v`
    /// (quantile, which then takes evenly spaced ranks). [`apply`] and the export's ranks
    /// both sort by it.
    pub fn preference_key(self, v: f64) -> f64 {
        match self {
            Rule::Extremes | Rule::Balanced => -v.abs(),
            Rule::Boundary => v.abs(),
            Rule::Quantile => v,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Rule::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                format!("unknown rule `{s}`: expected one of {}", names.join(", "))
            })
    }
}

fn order_by(v: &[f64], key: impl Fn(f64) -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| key(v[a]).total_cmp(&key(v[b])).then(a.cmp(&b)));
    idx
}

/// Applies `rule` to `v`, keeping `b` (clamped to `v.len()`) positions, returned ascending.
///
/// ```
/// use saln::select::rules::{apply, Rule};
/// let v = [0.9, -0.1, 0.05, -0.8, 0.3];
/// assert_eq!(apply(Rule::Extremes, &v, 2), vec![0, 3]);
/// assert_eq!(apply(Rule::Boundary, &v, 2), vec![1, 2]);
/// assert_eq!(apply(Rule::Quantile, &v, 5), vec![0, 1, 2, 3, 4]);
/// ```
pub fn apply(rule: Rule, v: &[f64], b: usize) -> Vec<usize> {
    let n = v.len();
    let b = b.min(n);
    let order = order_by(v, |x| rule.preference_key(x));
    let mut kept = match rule {
        Rule::Extremes | Rule::Boundary => order[..b].to_vec(),
        Rule::Quantile => (0..b).map(|k| order[((2 * k + 1) * n) / (2 * b)]).collect(),
        Rule::Balanced => {
            let by_mag = order;
            let pos: Vec<usize> = by_mag.iter().copied().filter(|&i| v[i] >= 0.0).collect();
            let neg: Vec<usize> = by_mag.iter().copied().filter(|&i| v[i] < 0.0).collect();
            let mut from_pos = ((b * pos.len()) as f64 / n.max(1) as f64).round() as usize;
            from_pos = from_pos.min(pos.len());
            let mut from_neg = b - from_pos;
            if from_neg > neg.len() {
                from_neg = neg.len();
                from_pos = b - from_neg;
            }
            pos[..from_pos]
                .iter()
                .chain(&neg[..from_neg])
                .copied()
                .collect()
        }
    };
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Rule; 4] = Rule::ALL;

    #[test]
    fn names_are_the_yaml_spelling() {
        for r in ALL {
            let yaml = serde_json::to_value(r).unwrap();
            assert_eq!(yaml.as_str(), Some(r.name()));
            assert_eq!(r.name().parse::<Rule>(), Ok(r));
        }
    }

    proptest! {
        #[test]
        fn every_rule_keeps_exactly_b_distinct(v in prop::collection::vec(-1.0f64..1.0, 1..200), frac in 0.0f64..1.0) {
            let b = ((v.len() as f64 * frac).round() as usize).max(1);
            for rule in ALL {
                let k = apply(rule, &v, b);
                prop_assert_eq!(k.len(), b);
                prop_assert!(k.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(k.iter().all(|&i| i < v.len()));
            }
        }
    }

    #[test]
    fn balanced_takes_from_both_sides_in_proportion() {
        // 6 positive, 2 negative; b = 4 -> 3 positive, 1 negative.
        let v = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, -0.9, -0.05];
        let k = apply(Rule::Balanced, &v, 4);
        assert_eq!(k, vec![3, 4, 5, 6]);
    }

    #[test]
    fn quantile_spans_the_axis() {
        let v: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let k = apply(Rule::Quantile, &v, 4);
        assert_eq!(k, vec![12, 37, 62, 87]);
    }
}
