//! The scheduling plan of the lanes: urgent runs in a task of its own (see the crate docs);
//! high, normal and low get `weight × batch` requests per round, so under full load they share
//! the router 8:4:2:1 (by default) and none starves; an empty lane gives its share to the rest.

use tidings_core::model::Priority;

#[derive(Debug, Clone)]
pub struct Plan {
    weights: [u32; 4],
    batch: usize,
}

impl Plan {
    pub fn new(weights: [u32; 4], batch: usize) -> Plan {
        Plan {
            weights: weights.map(|w| w.max(1)),
            batch: batch.max(1),
        }
    }

    /// Most requests taken from `p` in one turn.
    pub fn max(&self, p: Priority) -> usize {
        self.weights[p.index()] as usize * self.batch
    }

    /// One round: each non-urgent lane once with its share.
    pub fn round(&self) -> [(Priority, usize); 3] {
        [Priority::High, Priority::Normal, Priority::Low].map(|p| (p, self.max(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drain simulated backlogs with the plan; return the order lanes were served in.
    fn simulate(plan: &Plan, mut backlog: [usize; 4], rounds: usize) -> [usize; 4] {
        let mut served = [0; 4];
        for _ in 0..rounds {
            for (lane, max) in plan.round() {
                let u = backlog[0].min(plan.max(Priority::Urgent));
                backlog[0] -= u;
                served[0] += u;
                let n = backlog[lane.index()].min(max);
                backlog[lane.index()] -= n;
                served[lane.index()] += n;
            }
        }
        served
    }

    #[test]
    fn shares_follow_the_weights_and_low_is_never_starved() {
        let plan = Plan::new([8, 4, 2, 1], 10);
        let served = simulate(&plan, [0, 1_000_000, 1_000_000, 1_000_000], 10);
        assert_eq!(served, [0, 400, 200, 100]);
    }

    #[test]
    fn urgent_goes_first_and_idle_lanes_give_way() {
        let plan = Plan::new([8, 4, 2, 1], 10);
        let served = simulate(&plan, [50, 0, 0, 1_000], 1);
        assert_eq!(served[0], 50, "all urgent work in the first round");
        assert_eq!(served[3], 10);
        let served = simulate(&plan, [0, 0, 0, 1_000], 100);
        assert_eq!(served[3], 1_000, "low drains alone at full speed");
    }
}
