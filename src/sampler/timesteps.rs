//! Inference timesteps exactly as diffusers' `set_timesteps` picks them (numpy arithmetic
//! emulated: round half to even, and `np.arange`'s float fill `start + i * delta`).
use super::types::TimestepSpacing;
use crate::core::schedule::linspace;
use crate::error::{Error, Result};

/// `np.arange(start, stop, step)` for floats (step < 0 here): numpy sizes it as
/// ceil((stop - start) / step) and fills `start + i * ((start + step) - start)`.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

fn check_steps(steps: usize, train_steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::invalid("steps must be at least 1"));
    }
    if steps > train_steps {
        return Err(Error::invalid(format!(
            "steps {steps} exceeds the {train_steps} training timesteps (steps must be in [1, {train_steps}])"
        )));
    }
    Ok(())
}

/// Convert numpy's int64 results to timesteps, refusing any outside [0, T-1] (diffusers
/// would index out of range, or wrap a -1 to the last entry).
fn to_timesteps(v: Vec<f64>, offset: i64, train_steps: usize, what: &str) -> Result<Vec<usize>> {
    v.into_iter()
        .map(|x| {
            let t = x.round_ties_even() as i64 + offset;
            if t < 0 || t >= train_steps as i64 {
                Err(Error::invalid(format!(
                    "{what} gives timestep {t}, outside [0, {}]; choose other steps, spacing or steps_offset",
                    train_steps - 1
                )))
            } else {
                Ok(t as usize)
            }
        })
        .collect()
}

/// DDPMScheduler / DDIMScheduler `set_timesteps(steps)`: descending timesteps.
pub fn ddim_timesteps(
    train_steps: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    check_steps(steps, train_steps)?;
    let t = train_steps as f64;
    let what = format!("{} spacing with {steps} steps", name(spacing));
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v = linspace(0.0, t - 1.0, steps);
            v.reverse();
            to_timesteps(v, 0, train_steps, &what)
        }
        TimestepSpacing::Leading => {
            let ratio = (train_steps / steps) as f64;
            let v = (0..steps).rev().map(|i| i as f64 * ratio).collect();
            to_timesteps(v, steps_offset as i64, train_steps, &what)
        }
        TimestepSpacing::Trailing => {
            let v = np_arange(t, 0.0, -(t / steps as f64));
            to_timesteps(v, -1, train_steps, &what)
        }
    }
}

/// DPMSolverMultistepScheduler `set_timesteps(steps)`. `last_timestep` is T unless
/// lambda_min_clipped removes the noisiest timesteps. Its length can differ from `steps`
/// when numpy's arange adds an element; diffusers then runs that many steps.
pub fn dpm_timesteps(
    train_steps: usize,
    last_timestep: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    check_steps(steps, train_steps)?;
    if last_timestep == 0 {
        return Err(Error::invalid(
            "lambda_min_clipped removes every timestep; lower it",
        ));
    }
    let last = last_timestep as f64;
    let what = format!("{} spacing with {steps} steps", name(spacing));
    match spacing {
        TimestepSpacing::Linspace => {
            // linspace(0, last-1, n+1) reversed, dropping the final 0.
            let mut v = linspace(0.0, last - 1.0, steps + 1);
            v.reverse();
            v.pop();
            to_timesteps(v, 0, train_steps, &what)
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (steps + 1)) as f64;
            let v = (1..=steps).rev().map(|i| i as f64 * ratio).collect();
            to_timesteps(v, steps_offset as i64, train_steps, &what)
        }
        TimestepSpacing::Trailing => {
            let v = np_arange(last, 0.0, -(train_steps as f64 / steps as f64));
            to_timesteps(v, -1, train_steps, &what)
        }
    }
}

fn name(s: TimestepSpacing) -> &'static str {
    match s {
        TimestepSpacing::Leading => "leading",
        TimestepSpacing::Trailing => "trailing",
        TimestepSpacing::Linspace => "linspace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_diffusers_timesteps() {
        let l = ddim_timesteps(1000, 50, TimestepSpacing::Leading, 0).unwrap();
        assert_eq!((l[0], l[1], l[49]), (980, 960, 0));
        let l1 = ddim_timesteps(1000, 50, TimestepSpacing::Leading, 1).unwrap();
        assert_eq!((l1[0], l1[49]), (981, 1));
        let tr = ddim_timesteps(1000, 50, TimestepSpacing::Trailing, 0).unwrap();
        assert_eq!((tr[0], tr[49]), (999, 19));
        let ls = ddim_timesteps(1000, 4, TimestepSpacing::Linspace, 0).unwrap();
        // linspace(0, 999, 4) = 0, 333, 666, 999.
        assert_eq!(ls, vec![999, 666, 333, 0]);
        // Round half to even: linspace(0, 9, 3) = 0, 4.5, 9 -> 4.
        assert_eq!(
            ddim_timesteps(10, 3, TimestepSpacing::Linspace, 0).unwrap(),
            vec![9, 4, 0]
        );
        let full = ddim_timesteps(1000, 1000, TimestepSpacing::Leading, 0).unwrap();
        assert!(full.iter().rev().enumerate().all(|(i, t)| i == *t));
    }

    #[test]
    fn bad_step_counts() {
        let e = ddim_timesteps(1000, 0, TimestepSpacing::Leading, 0).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("at least 1"), "{e}");
        let e = ddim_timesteps(1000, 1001, TimestepSpacing::Leading, 0).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("1001"), "{e}");
        // steps_offset pushing past T-1.
        assert!(ddim_timesteps(1000, 1000, TimestepSpacing::Leading, 1).is_err());
    }
}
