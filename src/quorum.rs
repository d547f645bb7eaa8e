//! Quorum arithmetic.
//!
//! The original report says both "ceil(n/2)" and "ceil((n+1)/2)" slaves make a write quorum.
//! Only the second is a majority: with n = 4, ceil(4/2) = 2 would let two disjoint pairs each
//! acknowledge conflicting writes. dsm uses a true majority, `n / 2 + 1` (integer division),
//! which equals ceil((n+1)/2), of the cluster's **members** — every slave that has ever
//! registered and not been removed — not of the slaves alive right now. Counting only live
//! slaves would let two masters that each see a different half of the cluster both gather a
//! "majority".

/// The number of members that make a majority of `members`: `members / 2 + 1`.
/// Zero members have no majority (`None`): nothing can be written.
pub fn majority(members: usize) -> Option<usize> {
    (members > 0).then_some(members / 2 + 1)
}

/// True when `acks` out of `members` form a majority.
pub fn is_majority(acks: usize, members: usize) -> bool {
    majority(members).is_some_and(|m| acks >= m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_table() {
        // (members, majority, tolerated failures)
        let table = [
            (0, None, 0),
            (1, Some(1), 0),
            (2, Some(2), 0),
            (3, Some(2), 1),
            (4, Some(3), 1),
            (5, Some(3), 2),
            (6, Some(4), 2),
            (7, Some(4), 3),
            (9, Some(5), 4),
        ];
        for (n, m, f) in table {
            assert_eq!(majority(n), m, "majority({n})");
            // The failures a cluster of n rides out: the members outside a majority.
            assert_eq!(m.map_or(0, |m| n - m), f, "failures tolerated by {n}");
        }
    }

    #[test]
    fn two_majorities_always_intersect() {
        for n in 1..=12 {
            let m = majority(n).unwrap();
            assert!(2 * m > n, "two majorities of {n} could be disjoint");
            assert!(is_majority(m, n) && !is_majority(m - 1, n));
        }
    }
}
