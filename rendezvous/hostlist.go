package rendezvous

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Hostlist limits. Slurm refuses a bracket range of more than
// maxRangeHosts hosts and a bracket group that makes more than
// maxRangeHosts prefixes; ExpandHostlist refuses the same, and a whole list
// of more than MaxHosts names (no cluster has that many nodes, and a list
// such as a[0-65535]b[0-65535] would otherwise ask for 4 billion).
const (
	maxRangeHosts = 64 * 1024
	MaxHosts      = 1 << 20
)

// HostlistError is a node list that ExpandHostlist rejects. List is the
// whole list, Item the part at fault (a bracket range, or a token) and
// Reason what is wrong with it.
type HostlistError struct {
	List   string
	Item   string
	Reason string
	// SlurmAccepts is true for the few lists that Slurm's own parser
	// (scontrol show hostnames) does not reject but turns into no hosts,
	// some hosts, or other names than written: a number of 2^64 or more
	// (or a range up to 2^64-1, on which scontrol crashes), a bad range in
	// a bracket group before the last two, more than MaxHosts names.
	// ExpandHostlist rejects them instead.
	SlurmAccepts bool
}

func (e *HostlistError) Error() string {
	return fmt.Sprintf("rendezvous: hostlist %q: %s %q", e.List, e.Reason, e.Item)
}

// hostlistSeparators separate the items of a node list, as in Slurm.
const hostlistSeparators = "\t, "

// ExpandHostlist expands a Slurm node list (SLURM_JOB_NODELIST,
// SLURM_STEP_NODELIST) into host names, exactly as Slurm's own
// `scontrol show hostnames` does:
//
//   - items are separated by commas, spaces or tabs (a comma inside
//     brackets separates ranges instead); order and duplicates are kept;
//   - a bracket group holds comma-separated numbers and ranges N-M
//     (N <= M, at most 65536 hosts), zero-padded to the width of the
//     range's lower bound as written: n[01-3] is n01 n02 n03, n[99-101] is
//     n99 n100 n101, node[1-02] is node1 node2;
//   - several bracket groups form a cartesian product: with two groups the
//     first is the slowest (rack[1-2]-n[01-02] is rack1-n01 rack1-n02
//     rack2-n01 rack2-n02); with more, Slurm takes the last but one group
//     slowest, then the ones before it, and the last group fastest, and so
//     does ExpandHostlist;
//   - nothing may follow the last group (x[1-3]y is an error); empty
//     brackets, N > M and letters in a range are errors.
//
// Where Slurm's parser accepts a list but turns it into other names than
// written or silently drops some (see HostlistError.SlurmAccepts),
// ExpandHostlist returns an error instead. Any error is a *HostlistError.
func ExpandHostlist(list string) ([]string, error) {
	x := &expander{list: list}
	if strings.IndexByte(list, 0) >= 0 {
		return nil, x.fail(list, "contains a NUL byte:", false)
	}
	var quiet error // the first error Slurm would not have reported
	for _, tok := range hostlistTokens(list) {
		err := x.token(tok)
		var he *HostlistError
		switch {
		case err == nil:
		case errors.As(err, &he) && he.SlurmAccepts:
			// Go on: an error Slurm reports, later in the list, is the
			// one to give.
			if quiet == nil {
				quiet = err
			}
		default:
			return nil, err
		}
	}
	if quiet != nil {
		return nil, quiet
	}
	return x.hosts, nil
}

// hostlistTokens splits list at separators outside brackets. Like Slurm, a
// token runs on past a separator up to a ']' that closes a '[' before the
// separator.
func hostlistTokens(list string) []string {
	isSep := func(c byte) bool { return strings.IndexByte(hostlistSeparators, c) >= 0 }
	var toks []string
	i := 0
	for {
		for i < len(list) && isSep(list[i]) {
			i++
		}
		if i == len(list) {
			return toks
		}
		start, parse, end := i, i, i
		for {
			for end < len(list) && !isSep(list[end]) {
				end++
			}
			extended := false
			for {
				open := indexFrom(list, parse, '[')
				if open < 0 || open > end {
					break
				}
				closing := indexFrom(list, parse, ']')
				if closing < 0 || closing < open {
					break
				}
				if closing < end {
					parse = closing + 1
					continue
				}
				end, extended = closing, true
				break
			}
			if !extended {
				break
			}
		}
		toks = append(toks, list[start:end])
		i = end
	}
}

func indexFrom(s string, from int, c byte) int {
	i := strings.IndexByte(s[from:], c)
	if i < 0 {
		return -1
	}
	return from + i
}

// expander collects the hosts of one list.
type expander struct {
	list  string
	hosts []string
}

func (x *expander) fail(item, reason string, slurmAccepts bool) error {
	return &HostlistError{List: x.list, Item: item, Reason: reason, SlurmAccepts: slurmAccepts}
}

// token expands one item of the list.
func (x *expander) token(tok string) error {
	open := strings.LastIndexByte(tok, '[')
	if open < 0 {
		return x.single(tok)
	}
	prefix, rest := tok[:open], tok[open+1:]
	closing := strings.IndexByte(rest, ']')
	if closing < 0 {
		// An unclosed '[': Slurm keeps the name up to it and adds a ']'
		// (n[1-2 is the one host "n]"), or keeps what follows the '['
		// when nothing precedes it.
		if prefix != "" {
			return x.single(prefix + "]")
		}
		return x.single(rest)
	}
	if after := rest[closing+1:]; after != "" && after[0] != ',' {
		return x.fail(tok, "has text after its last ']' in", false)
	}
	ranges, err := x.ranges(rest[:closing], true)
	if err != nil {
		return err
	}
	return x.push(prefix, ranges, true)
}

// single adds a host name that has no brackets. Slurm reads its trailing
// digits as a number and writes it back at the same width, which gives the
// name as written unless the number does not fit in 64 bits.
func (x *expander) single(name string) error {
	digits := len(name) - len(strings.TrimRight(name, "0123456789"))
	if digits > 0 {
		if _, err := strconv.ParseUint(name[len(name)-digits:], 10, 64); err != nil {
			return x.fail(name, "has a number too large (2^64 or more) in", true)
		}
	}
	return x.add(name)
}

func (x *expander) add(names ...string) error {
	if len(x.hosts)+len(names) > MaxHosts {
		return x.fail(x.list, fmt.Sprintf("expands to more than %d hosts:", MaxHosts), true)
	}
	x.hosts = append(x.hosts, names...)
	return nil
}

// span is one number or range N-M of a bracket group, with the width its
// numbers are zero-padded to.
type span struct {
	lo, hi uint64
	width  int
}

func (s span) count() uint64 { return s.hi - s.lo + 1 }

// ranges parses the inside of a bracket group: numbers and ranges
// separated by commas. reported says whether Slurm reports an error in
// this group: it does in the last two groups of an item, and drops the
// hosts of a bad group before them without a word.
func (x *expander) ranges(group string, reported bool) ([]span, error) {
	var spans []span
	for _, r := range strings.Split(group, ",") {
		s, reason := parseSpan(r)
		if reason != "" {
			return nil, x.fail(r, reason, !reported || reason == reasonTooLarge)
		}
		spans = append(spans, s)
	}
	return spans, nil
}

const reasonTooLarge = "has a number too large (2^64 or more, or a range up to 2^64-1) in range"

// parseSpan parses "N", "N-M" or "N-" as Slurm does (strtoul: leading
// white space and a '+' are allowed, and count in the width).
func parseSpan(r string) (span, string) {
	loStr, hiStr, hasHi := strings.Cut(r, "-")
	if hasHi && strings.HasPrefix(hiStr, "-") {
		return span{}, "has a negative number in range"
	}
	if strings.ContainsRune(r, 'x') {
		return span{}, "is not a number or range N-M:"
	}
	lo, n, over, _ := strtoul(loStr)
	// Slurm reads the upper bound to its end, but the lower bound only up
	// to its last digit when an upper bound follows: n[1a-3] is n01 n02 n03.
	if n == 0 || (n != len(loStr) && (!hasHi || hiStr == "")) {
		return span{}, "is not a number or range N-M:"
	}
	hi := lo
	if hasHi && hiStr != "" {
		var m int
		var hiOver, neg bool
		hi, m, hiOver, neg = strtoul(hiStr)
		if m == 0 || m != len(hiStr) {
			return span{}, "is not a number or range N-M:"
		}
		if neg {
			return span{}, "has a negative number in range"
		}
		over = over || hiOver
	}
	switch {
	case over || (hi == math.MaxUint64 && lo < hi): // Slurm crashes on the latter
		return span{}, reasonTooLarge
	case lo > hi:
		return span{}, "has a range that runs backwards (N > M):"
	case hi-lo+1 > maxRangeHosts:
		return span{}, fmt.Sprintf("has more than %d hosts in range", maxRangeHosts)
	}
	return span{lo: lo, hi: hi, width: len(loStr)}, ""
}

// strtoul reads a decimal number as C's strtoul does: leading white space,
// an optional sign, then digits. It returns the value, how many bytes it
// read (0 when there are no digits), whether the value overflowed and
// whether it was negative (which strtoul wraps around).
func strtoul(s string) (v uint64, n int, over, neg bool) {
	i := 0
	for i < len(s) && strings.IndexByte(" \t\n\v\f\r", s[i]) >= 0 {
		i++
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		d := uint64(s[i] - '0')
		if v > (math.MaxUint64-d)/10 {
			over = true
		}
		v = v*10 + d
		i++
	}
	if i == start {
		return 0, 0, false, false
	}
	return v, i, over, neg && v != 0
}

// push adds prefix followed by each number of ranges. A prefix that holds
// a bracket group itself (rack[1-2]-n, with the group n[...] in ranges) is
// expanded first: for each of its numbers, in order, the rest of the name
// is expanded in turn. top is false in that recursion, where Slurm drops
// the hosts of a bad group without reporting it.
func (x *expander) push(prefix string, ranges []span, top bool) error {
	open := strings.LastIndexByte(prefix, '[')
	closing := -1
	if open >= 0 {
		closing = strings.LastIndexByte(prefix[open:], ']')
	}
	if closing < 0 {
		return x.pushFlat(prefix, ranges)
	}
	closing += open
	head, group, tail := prefix[:open], prefix[open+1:closing], prefix[closing+1:]
	outer, err := x.ranges(group, top)
	if err != nil {
		return err
	}
	var total uint64
	for _, o := range outer {
		if total += o.count(); total > maxRangeHosts {
			return x.fail(prefix, fmt.Sprintf("has a bracket group of more than %d names in", maxRangeHosts), !top)
		}
	}
	for _, o := range outer {
		for v := o.lo; ; v++ {
			if err := x.push(head+pad(v, o.width)+tail, ranges, false); err != nil {
				return err
			}
			if v == o.hi {
				break
			}
		}
	}
	return nil
}

func (x *expander) pushFlat(prefix string, ranges []span) error {
	var n uint64
	for _, r := range ranges {
		n += r.count()
	}
	if uint64(len(x.hosts))+n > MaxHosts {
		return x.fail(x.list, fmt.Sprintf("expands to more than %d hosts:", MaxHosts), true)
	}
	for _, r := range ranges {
		for v := r.lo; ; v++ {
			x.hosts = append(x.hosts, prefix+pad(v, r.width))
			if v == r.hi {
				break
			}
		}
	}
	return nil
}

// pad writes v in decimal, zero-padded to width (printf's %0*lu).
func pad(v uint64, width int) string {
	s := strconv.FormatUint(v, 10)
	if len(s) < width {
		s = strings.Repeat("0", width-len(s)) + s
	}
	return s
}
