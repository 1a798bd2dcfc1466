package gpu

// maxCombinations bounds the exhaustive search in chooseDevices; past it a
// greedy search is used (C(16,8) is 12870, so real nodes stay exhaustive).
const maxCombinations = 200_000

// sameGPUScore is the pair score of two MIG devices of one GPU: closer than
// any NVLink.
const sameGPUScore = 100_000

// pairScore scores how well two visible devices are connected (see
// Link.Proximity).
func pairScore(t *Topology, a, b VisibleDevice) int {
	if a.GPU == b.GPU {
		return sameGPUScore
	}
	return t.Links[a.GPU][b.GPU].Proximity()
}

func setScore(t *Topology, set VisibleSet) int {
	s := 0
	for i := range set {
		for j := i + 1; j < len(set); j++ {
			s += pairScore(t, set[i], set[j])
		}
	}
	return s
}

func numaSpan(t *Topology, set VisibleSet) int {
	seen := map[int]bool{}
	for _, d := range set {
		seen[t.GPUs[d.GPU].NUMANode] = true
	}
	return len(seen)
}

// chooseDevices returns the k devices of visible, in visible order, with the
// highest setScore, then the smallest NUMA span, then earliest in visible
// order.
func chooseDevices(t *Topology, visible VisibleSet, k int) VisibleSet {
	if k >= len(visible) {
		return visible
	}
	if binomial(len(visible), k) > maxCombinations {
		return chooseGreedy(t, visible, k)
	}
	var best VisibleSet
	bestScore, bestSpan := -1, 0
	idx := make([]int, k)
	for i := range idx {
		idx[i] = i
	}
	set := make(VisibleSet, k)
	for {
		for i, x := range idx {
			set[i] = visible[x]
		}
		score, span := setScore(t, set), numaSpan(t, set)
		if score > bestScore || score == bestScore && span < bestSpan {
			best, bestScore, bestSpan = append(VisibleSet(nil), set...), score, span
		}
		if !nextCombination(idx, len(visible)) {
			return best
		}
	}
}

// nextCombination advances idx to the next k-combination of 0..n-1 in
// lexicographic order, reporting false after the last.
func nextCombination(idx []int, n int) bool {
	k := len(idx)
	i := k - 1
	for i >= 0 && idx[i] == n-k+i {
		i--
	}
	if i < 0 {
		return false
	}
	idx[i]++
	for j := i + 1; j < k; j++ {
		idx[j] = idx[j-1] + 1
	}
	return true
}

func binomial(n, k int) int {
	r := 1
	for i := 1; i <= k; i++ {
		r = r * (n - k + i) / i
		if r > maxCombinations {
			return r
		}
	}
	return r
}

// chooseGreedy grows a set from the best-connected pair, adding each time the
// device that adds the most score, or on a tie the one best connected to the
// devices still outside (so that it starts another well-connected group). It
// returns the set in visible order.
func chooseGreedy(t *Topology, visible VisibleSet, k int) VisibleSet {
	in := make([]bool, len(visible))
	a, b, best := 0, 1, -1
	for i := range visible {
		for j := i + 1; j < len(visible); j++ {
			if s := pairScore(t, visible[i], visible[j]); s > best {
				a, b, best = i, j, s
			}
		}
	}
	in[a], in[b] = true, k > 1
	for n := 2; n < k; n++ {
		pick, gain, potential := -1, -1, -1
		for i := range visible {
			if in[i] {
				continue
			}
			g, pot := 0, 0
			for j := range visible {
				switch {
				case in[j]:
					g += pairScore(t, visible[i], visible[j])
				case j != i:
					pot += pairScore(t, visible[i], visible[j])
				}
			}
			if g > gain || g == gain && pot > potential {
				pick, gain, potential = i, g, pot
			}
		}
		in[pick] = true
	}
	var out VisibleSet
	for i, ok := range in {
		if ok {
			out = append(out, visible[i])
		}
	}
	return out
}

// orderDevices orders set as a path that starts at its first device and
// always steps to the best-connected device not yet on it (the earliest on a
// tie), so that neighbours along the path, and so neighbouring ranks, are
// well connected.
func orderDevices(t *Topology, set VisibleSet) VisibleSet {
	out := make(VisibleSet, 0, len(set))
	used := make([]bool, len(set))
	cur := 0
	for range set {
		used[cur] = true
		out = append(out, set[cur])
		next, best := -1, -1
		for i, d := range set {
			if !used[i] {
				if s := pairScore(t, set[cur], d); s > best {
					next, best = i, s
				}
			}
		}
		cur = next
	}
	return out
}
