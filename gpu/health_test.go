//go:build linux && cgo

package gpu

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// xidNode is a mock NVML with n GPUs whose event set delivers the events
// sent on events, one per Wait, and times out (after the wait asked for)
// when none is pending.
type xidNode struct {
	lib     *mock.Interface
	devs    []*mock.Device
	events  chan nvml.EventData
	freed   chan struct{}
	unwatch map[int]bool // GPUs whose RegisterEvents fails
}

func newXIDNode(n int, unwatch ...int) *xidNode {
	x := &xidNode{events: make(chan nvml.EventData, 8), freed: make(chan struct{}), unwatch: map[int]bool{}}
	for _, i := range unwatch {
		x.unwatch[i] = true
	}
	set := &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			select {
			case e := <-x.events:
				return e, nvml.SUCCESS
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { close(x.freed); return nvml.SUCCESS },
	}
	for i := range n {
		x.devs = append(x.devs, &mock.Device{
			GetIndexFunc: func() (int, nvml.Return) { return i, nvml.SUCCESS },
			GetUUIDFunc:  func() (string, nvml.Return) { return gpuUUID(i), nvml.SUCCESS },
			RegisterEventsFunc: func(types uint64, _ nvml.EventSet) nvml.Return {
				if x.unwatch[i] || types&nvml.EventTypeXidCriticalError == 0 {
					return nvml.ERROR_NOT_SUPPORTED
				}
				return nvml.SUCCESS
			},
		})
	}
	x.lib = &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS },
		DeviceGetHandleByUUIDFunc: func(uuid string) (nvml.Device, nvml.Return) {
			for i, d := range x.devs {
				if gpuUUID(i) == uuid {
					return d, nvml.SUCCESS
				}
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
	}
	return x
}

func (x *xidNode) send(gpu int, typ, xid uint64) {
	x.events <- nvml.EventData{Device: x.devs[gpu], EventType: typ, EventData: xid}
}

// watch starts a watch of the given GPUs and returns the channel its
// reports arrive on.
func (x *xidNode) watch(t *testing.T, gpus ...int) (*XIDWatch, chan *XIDError) {
	t.Helper()
	var uuids []string
	for _, i := range gpus {
		uuids = append(uuids, gpuUUID(i))
	}
	got := make(chan *XIDError, 4)
	w, err := watchXIDs(x.lib, uuids, func(e *XIDError) { got <- e })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w, got
}

func TestWatchXIDsCritical(t *testing.T) {
	for _, tt := range []struct {
		xid     uint64
		meaning string
	}{
		{48, "double-bit ECC error"},
		{79, "GPU has fallen off the bus"},
		{999, "unlisted XID (see NVIDIA's XID catalogue)"},
	} {
		x := newXIDNode(4)
		_, got := x.watch(t, 1, 3)
		x.send(1, nvml.EventTypeXidCriticalError, 13) // the application's fault: ignored
		x.send(3, nvml.EventTypeSingleBitEccError, 0) // not an XID event
		x.send(3, nvml.EventTypeXidCriticalError, tt.xid)
		x.send(1, nvml.EventTypeXidCriticalError, 48) // only the first is reported
		select {
		case e := <-got:
			want := &XIDError{Index: 3, UUID: gpuUUID(3), XID: tt.xid, Meaning: tt.meaning}
			if *e != *want {
				t.Errorf("XID %d: reported %+v; want %+v", tt.xid, e, want)
			}
			if r := e.Reason(); r != "GPU 3 ("+gpuUUID(3)+") reported XID "+itoa(tt.xid)+": "+tt.meaning {
				t.Errorf("Reason() = %q", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("XID %d: not reported within 10s", tt.xid)
		}
		select {
		case e := <-got:
			t.Errorf("a second report: %+v; want only the first", e)
		case <-time.After(2 * xidWaitMillis * time.Millisecond):
		}
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestWatchXIDsWarnings: a GPU that cannot report XID events is named in
// a warning; the others are watched. With none watchable, an error.
func TestWatchXIDsWarnings(t *testing.T) {
	x := newXIDNode(2, 0)
	w, got := x.watch(t, 0, 1)
	if len(w.Warnings) != 1 || w.Warnings[0] != "GPU 0 ("+gpuUUID(0)+"): not watched for XID errors: ERROR_NOT_SUPPORTED" {
		t.Errorf("Warnings = %q; want one for GPU 0", w.Warnings)
	}
	x.send(1, nvml.EventTypeXidCriticalError, 79)
	select {
	case e := <-got:
		if e.Index != 1 {
			t.Errorf("reported %+v; want GPU 1", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("XID 79 on GPU 1 not reported within 10s")
	}

	y := newXIDNode(1, 0)
	if _, err := watchXIDs(y.lib, []string{gpuUUID(0)}, func(*XIDError) {}); !errors.Is(err, ErrNVMLFailed) {
		t.Errorf("watchXIDs(no watchable GPU) error = %v; want ErrNVMLFailed", err)
	}
	select {
	case <-y.freed:
	default:
		t.Error("the event set was not freed")
	}
}

// TestWatchXIDsNoGPUs: without GPUs nothing is loaded (a nil library
// would panic if it were called).
func TestWatchXIDsNoGPUs(t *testing.T) {
	w, err := watchXIDs(nil, nil, func(*XIDError) { t.Error("reported an XID without GPUs") })
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// TestWatchXIDsClose: Close ends the watch and frees the event set.
func TestWatchXIDsClose(t *testing.T) {
	x := newXIDNode(1)
	w, _ := x.watch(t, 0)
	w.Close()
	select {
	case <-x.freed:
	default:
		t.Error("Close did not free the event set")
	}
}

func TestPeakGPUMemory(t *testing.T) {
	x := newXIDNode(3)
	stats := map[int]map[uint32]uint64{ // GPU -> pid -> bytes
		0: {100: 1 << 30, 101: 2 << 30},
		1: {100: 512 << 20},
		2: {101: 8 << 30}, // accounting off: not read
	}
	for i, d := range x.devs {
		d.GetAccountingModeFunc = func() (nvml.EnableState, nvml.Return) {
			if i == 2 {
				return nvml.FEATURE_DISABLED, nvml.SUCCESS
			}
			return nvml.FEATURE_ENABLED, nvml.SUCCESS
		}
		d.GetAccountingStatsFunc = func(pid uint32) (nvml.AccountingStats, nvml.Return) {
			if b, ok := stats[i][pid]; ok {
				return nvml.AccountingStats{MaxMemoryUsage: b}, nvml.SUCCESS
			}
			return nvml.AccountingStats{}, nvml.ERROR_NOT_FOUND
		}
	}
	peaks, notes, err := peakGPUMemory(x.lib, []string{gpuUUID(0), gpuUUID(1), gpuUUID(2)}, []int{100, 101, 102})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]int64{100: 1<<30 + 512<<20, 101: 2 << 30}
	if len(peaks) != len(want) || peaks[100] != want[100] || peaks[101] != want[101] {
		t.Errorf("peakGPUMemory = %v; want %v", peaks, want)
	}
	if len(notes) != 1 || notes[0] != "GPU 2 ("+gpuUUID(2)+"): accounting mode is off, so no per-rank GPU memory (nvidia-smi -am 1 turns it on)" {
		t.Errorf("notes = %q; want one for GPU 2", notes)
	}
}
