package live

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCommWithSpacesAndParens(t *testing.T) {
	// Fields after the command: 3 state ... 14 utime 15 stime ... 20
	// num_threads 21 itrealvalue 22 starttime 23 vsize 24 rss.
	line := "4242 (my (evil) comm) R) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 7 0 987654 12345678 321 18446744073709551615\n"
	st, ok := parseStat([]byte(line))
	if !ok {
		t.Fatal("parseStat refused a valid line")
	}
	want := procStat{state: 'S', ticks: 200, threads: 7, startTicks: 987654, rssPages: 321}
	if st != want {
		t.Errorf("parseStat = %+v; want %+v", st, want)
	}
	for _, bad := range []string{"", "4242 no parens S 1", "4242 (comm) S 1 2 3", "4242 (comm)"} {
		if st, ok := parseStat([]byte(bad)); ok {
			t.Errorf("parseStat(%q) = %+v, ok; want refused", bad, st)
		}
	}
}

func TestReadStatOwnProcess(t *testing.T) {
	var buf [1024]byte
	before, ok := readStat(os.Getpid(), buf[:])
	if !ok || before.threads < 1 || before.rssPages <= 0 || before.startTicks == 0 {
		t.Fatalf("readStat(self) = %+v, %v", before, ok)
	}
	// Spin until the kernel has counted some CPU time (bounded).
	deadline := time.Now().Add(10 * time.Second)
	var after procStat
	for after.ticks <= before.ticks && time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			_ = i * i
		}
		after, _ = readStat(os.Getpid(), buf[:])
	}
	if after.ticks <= before.ticks || after.startTicks != before.startTicks {
		t.Errorf("CPU ticks %d -> %d, start %d -> %d; want more ticks, the same start", before.ticks, after.ticks, before.startTicks, after.startTicks)
	}
}
