package place

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// CPUSet is a set of logical CPU numbers, kept sorted and free of duplicates.
// Its text and JSON form is the Linux cpulist form, for example "0-15,32-47";
// the empty set is "". The zero value is the empty set.
type CPUSet []int

// maxCPU bounds the CPU numbers ParseCPUList accepts, so that a typo such as
// "0-99999999" cannot allocate gigabytes.
const maxCPU = 1 << 16

// ParseCPUList parses the Linux cpulist form used by sysfs and
// /proc/self/status: comma-separated CPU numbers and inclusive ranges, such as
// "0-15,32-47" or "3". Spaces around items and a trailing newline are
// allowed; the empty string is the empty set. Overlapping or unordered items
// are merged.
func ParseCPUList(s string) (CPUSet, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return CPUSet{}, nil
	}
	var cpus []int
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		lo, hi, isRange := strings.Cut(item, "-")
		first, err := parseCPU(lo)
		if err != nil {
			return nil, fmt.Errorf("place: parse cpu list %q: %w", s, err)
		}
		last := first
		if isRange {
			if last, err = parseCPU(hi); err != nil {
				return nil, fmt.Errorf("place: parse cpu list %q: %w", s, err)
			}
			if last < first {
				return nil, fmt.Errorf("place: parse cpu list %q: range %q runs backwards", s, item)
			}
		}
		for c := first; c <= last; c++ {
			cpus = append(cpus, c)
		}
	}
	return NewCPUSet(cpus...), nil
}

func parseCPU(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("bad cpu number %q", s)
	}
	if n > maxCPU {
		return 0, fmt.Errorf("cpu number %d above %d", n, maxCPU)
	}
	return n, nil
}

// NewCPUSet returns the set of the given CPU numbers, sorted and without
// duplicates. Negative numbers are dropped.
func NewCPUSet(cpus ...int) CPUSet {
	s := make(CPUSet, 0, len(cpus))
	for _, c := range cpus {
		if c >= 0 {
			s = append(s, c)
		}
	}
	slices.Sort(s)
	return slices.Compact(s)
}

// Len returns the number of CPUs in s.
func (s CPUSet) Len() int { return len(s) }

// Contains reports whether cpu is in s.
func (s CPUSet) Contains(cpu int) bool {
	_, ok := slices.BinarySearch(s, cpu)
	return ok
}

// Equal reports whether s and o hold the same CPUs.
func (s CPUSet) Equal(o CPUSet) bool { return slices.Equal(s, o) }

// Intersect returns the CPUs in both s and o.
func (s CPUSet) Intersect(o CPUSet) CPUSet {
	out := CPUSet{}
	for _, c := range s {
		if o.Contains(c) {
			out = append(out, c)
		}
	}
	return out
}

// Union returns the CPUs in s or o.
func (s CPUSet) Union(o CPUSet) CPUSet {
	return NewCPUSet(append(slices.Clone(s), o...)...)
}

// Difference returns the CPUs in s that are not in o.
func (s CPUSet) Difference(o CPUSet) CPUSet {
	out := CPUSet{}
	for _, c := range s {
		if !o.Contains(c) {
			out = append(out, c)
		}
	}
	return out
}

// runs returns s as maximal runs of consecutive CPUs.
func (s CPUSet) runs() []CPUSet {
	var out []CPUSet
	start := 0
	for i := 1; i <= len(s); i++ {
		if i == len(s) || s[i] != s[i-1]+1 {
			out = append(out, s[start:i])
			start = i
		}
	}
	return out
}

// Split shares s out into n non-overlapping parts whose sizes differ by at
// most one, each part a block of neighbouring CPUs. It returns nil when n < 1
// or s has fewer than n CPUs.
//
// When s is made of equal-length runs with at least n CPUs each, such as
// "0-15,32-47" (the usual Linux numbering of one socket's cores and their SMT
// siblings), part i takes the i-th block of every run, so that a core and its
// sibling thread stay in the same part: "0-15,32-47" split in two is
// "0-7,32-39" and "8-15,40-47".
func (s CPUSet) Split(n int) []CPUSet {
	if n < 1 || len(s) < n {
		return nil
	}
	runs := s.runs()
	if len(runs) > 1 && equalLengths(runs) && len(runs[0]) >= n {
		parts := make([]CPUSet, n)
		for _, r := range runs {
			for i, p := range splitEven(r, n) {
				parts[i] = append(parts[i], p...)
			}
		}
		return parts
	}
	return splitEven(s, n)
}

// splitEven cuts s into n consecutive pieces whose sizes differ by at most
// one, the larger ones first.
func splitEven(s CPUSet, n int) []CPUSet {
	parts := make([]CPUSet, n)
	size, extra := len(s)/n, len(s)%n
	at := 0
	for i := range parts {
		k := size
		if i < extra {
			k++
		}
		parts[i] = slices.Clone(s[at : at+k])
		at += k
	}
	return parts
}

func equalLengths(runs []CPUSet) bool {
	for _, r := range runs {
		if len(r) != len(runs[0]) {
			return false
		}
	}
	return true
}

// String returns s in canonical cpulist form: ascending, ranges for runs of
// two or more CPUs ("0-1"), "" for the empty set.
func (s CPUSet) String() string {
	var b strings.Builder
	for i, r := range s.runs() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(r[0]))
		if len(r) > 1 {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(r[len(r)-1]))
		}
	}
	return b.String()
}

// MarshalText returns s in cpulist form.
func (s CPUSet) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a cpulist into s.
func (s *CPUSet) UnmarshalText(b []byte) error {
	v, err := ParseCPUList(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

var (
	_ json.Marshaler   = CPUSet(nil)
	_ json.Unmarshaler = (*CPUSet)(nil)
)

// MarshalJSON returns s as a JSON string in cpulist form; the empty set,
// nil included, is "".
func (s CPUSet) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a JSON string in cpulist form into s. JSON null leaves
// s unchanged.
func (s *CPUSet) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("place: cpu list must be a string such as \"0-15,32-47\": %w", err)
	}
	return s.UnmarshalText([]byte(str))
}
