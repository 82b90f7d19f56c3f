//! Placement: which datanodes hold a message, decided by its request id alone.
//!
//! Rendezvous (highest-random-weight) hashing: every datanode name gets a score for the key,
//! `score(key, name)`, and the datanodes in descending score order are the key's *placement
//! order*. A Store goes to the first `--replicas` healthy ones; failover goes down the order.
//! Because the order depends only on the key and the names, every headnode computes the same one
//! (no shared state), a retry of the same key reaches the datanode that already holds it, and
//! adding or removing a datanode moves only the keys whose first places it takes or held.
//!
//! The score is a fixed function, the same in every build and on every machine: FNV-1a (64 bit)
//! over the name, a zero byte and the key, finished with MurmurHash3's 64-bit mixer so every
//! input bit moves every output bit. Changing it re-places every key: it is part of the protocol
//! between headnodes and data already stored.

/// The placement order of `key` over `names`: indexes into `names`, best first.
pub fn rank<S: AsRef<str>>(key: &str, names: &[S]) -> Vec<usize> {
    let named: Vec<(usize, &S)> = names.iter().enumerate().collect();
    order(key, named, |(_, name)| name.as_ref())
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// `items` in the placement order of `key`, each named by `name`: what [`rank`] computes, in
/// place (the headnode orders its members for every Store).
pub fn order<T>(key: &str, items: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    let mut scored: Vec<(u64, T)> = items
        .into_iter()
        .map(|item| (score(key, name(&item)), item))
        .collect();
    // Highest score first; equal scores (never in practice) by name, so the order is total.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| name(&a.1).cmp(name(&b.1))));
    scored.into_iter().map(|(_, item)| item).collect()
}

/// The weight of datanode `name` for `key`.
pub fn score(key: &str, name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for byte in name.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's finaliser: a bijection on u64 with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("datanode{i}")).collect()
    }

    fn random_key(rng: &mut impl Rng) -> String {
        (0..24)
            .map(|_| rng.random_range(b'!'..=b'~') as char)
            .collect()
    }

    #[test]
    fn the_order_is_a_permutation_of_every_datanode() {
        let pool = names(5);
        let mut order = rank("some-key", &pool);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert!(rank::<String>("k", &[]).is_empty());
    }

    #[test]
    fn the_score_is_fixed_across_builds_and_machines() {
        // Headnodes of different builds must agree: these values are part of the protocol
        // (computed independently, by a few lines of Python implementing the same definition).
        assert_eq!(score("", ""), 0xb903_4ad3_7056_f5fb);
        assert_eq!(score("req-1", "datanode1"), 0x34e2_fa4d_5f40_6240);
    }

    #[test]
    fn first_places_are_uniform_over_random_keys() {
        let mut rng = rand::rng();
        let pool = names(3);
        let keys = 30_000;
        let mut firsts = [0usize; 3];
        let mut seconds = [0usize; 3];
        for _ in 0..keys {
            let order = rank(&random_key(&mut rng), &pool);
            firsts[order[0]] += 1;
            seconds[order[1]] += 1;
        }
        for counts in [firsts, seconds] {
            for count in counts {
                let share = count as f64 / keys as f64;
                assert!((share - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
            }
        }
    }

    #[test]
    fn sequential_keys_spread_as_well_as_random_ones() {
        let pool = names(3);
        let mut firsts = [0usize; 3];
        for i in 0..30_000 {
            firsts[rank(&format!("client-{i}"), &pool)[0]] += 1;
        }
        for count in firsts {
            assert!((9_400..=10_600).contains(&count), "{firsts:?}");
        }
    }

    #[test]
    fn removing_a_datanode_moves_only_the_keys_it_held() {
        let mut rng = rand::rng();
        let pool = names(4);
        let without: Vec<String> = pool.iter().filter(|n| *n != "datanode3").cloned().collect();
        for _ in 0..10_000 {
            let key = random_key(&mut rng);
            let before: Vec<&str> = rank(&key, &pool)
                .iter()
                .map(|&i| pool[i].as_str())
                .collect();
            let after: Vec<&str> = rank(&key, &without)
                .iter()
                .map(|&i| without[i].as_str())
                .collect();
            // The order is the old one with datanode3 taken out: nothing else moves.
            let expected: Vec<&str> = before.into_iter().filter(|n| *n != "datanode3").collect();
            assert_eq!(after, expected, "{key}");
        }
    }

    #[test]
    fn two_headnodes_with_the_same_pool_in_any_order_agree() {
        let mut rng = rand::rng();
        let pool = names(5);
        let mut shuffled = pool.clone();
        shuffled.reverse();
        shuffled.swap(1, 3);
        for _ in 0..1_000 {
            let key = random_key(&mut rng);
            let a: Vec<&str> = rank(&key, &pool)
                .iter()
                .map(|&i| pool[i].as_str())
                .collect();
            let b: Vec<&str> = rank(&key, &shuffled)
                .iter()
                .map(|&i| shuffled[i].as_str())
                .collect();
            assert_eq!(a, b);
        }
    }
}
