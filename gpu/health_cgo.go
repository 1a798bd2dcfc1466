//go:build linux && cgo

package gpu

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// xidWaitMillis bounds one wait for NVML events, and so how long Close
// may wait for the watcher.
const xidWaitMillis = 500

// A XIDWatch watches GPUs for critical XID errors; see WatchXIDs. Close
// it when the job is over.
type XIDWatch struct {
	lib     NVML
	set     nvml.EventSet
	devices map[nvml.Device]gpuID
	onXID   func(*XIDError)
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
	// Warnings are notes, one line each with no package prefix, about
	// GPUs that could not be watched.
	Warnings []string
}

type gpuID struct {
	index int
	uuid  string
}

// WatchXIDs watches the GPUs with the given UUIDs for critical XID errors
// (NVML's XID events, less the XIDs an application's own fault causes)
// and calls onXID, from the watch's goroutine, with the first one. With no
// UUIDs it does nothing and loads nothing. The error is an *NVMLError when
// NVML cannot be loaded or cannot watch any of the GPUs.
func WatchXIDs(uuids []string, onXID func(*XIDError)) (*XIDWatch, error) {
	return watchXIDs(newNVML(), uuids, onXID)
}

func watchXIDs(lib NVML, uuids []string, onXID func(*XIDError)) (*XIDWatch, error) {
	w := &XIDWatch{onXID: onXID, quit: make(chan struct{}), done: make(chan struct{}), devices: map[nvml.Device]gpuID{}}
	if len(uuids) == 0 {
		close(w.done)
		return w, nil
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, &NVMLError{Op: "init", GPU: -1, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
	}
	set, ret := lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		lib.Shutdown()
		return nil, &NVMLError{Op: "event set", GPU: -1, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
	}
	w.lib, w.set = lib, set
	for _, uuid := range uuids {
		if err := w.register(uuid); err != "" {
			w.Warnings = append(w.Warnings, err)
		}
	}
	if len(w.devices) == 0 {
		w.release()
		return nil, &NVMLError{Op: "XID events", GPU: -1, Detail: "no GPU of the job can report them", Err: ErrNVMLFailed}
	}
	go w.loop()
	return w, nil
}

// register subscribes to the XID events of the GPU uuid, or says why it
// could not.
func (w *XIDWatch) register(uuid string) string {
	d, ret := w.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return fmt.Sprintf("GPU %s: not watched for XID errors: %v", uuid, ret)
	}
	index, ret := d.GetIndex()
	if ret != nvml.SUCCESS {
		index = -1
	}
	if ret := d.RegisterEvents(nvml.EventTypeXidCriticalError, w.set); ret != nvml.SUCCESS {
		return fmt.Sprintf("GPU %d (%s): not watched for XID errors: %v", index, uuid, ret)
	}
	w.devices[d] = gpuID{index, uuid}
	return ""
}

// loop waits for events until Close, and reports the first critical XID.
func (w *XIDWatch) loop() {
	defer close(w.done)
	reported := false
	for {
		select {
		case <-w.quit:
			return
		default:
		}
		data, ret := w.set.Wait(xidWaitMillis)
		switch {
		case ret == nvml.ERROR_TIMEOUT:
			continue
		case ret != nvml.SUCCESS:
			// The event set is broken (the driver is gone, say): nothing
			// more can be learnt from it.
			return
		case reported || data.EventType&nvml.EventTypeXidCriticalError == 0 || !CriticalXID(data.EventData):
			continue
		}
		id, ok := w.devices[data.Device]
		if !ok {
			id = gpuID{index: -1, uuid: "unknown"}
		}
		reported = true
		w.onXID(&XIDError{Index: id.index, UUID: id.uuid, XID: data.EventData, Meaning: XIDMeaning(data.EventData)})
	}
}

// Close ends the watch, waits for its goroutine (at most one NVML wait,
// half a second) and releases NVML.
func (w *XIDWatch) Close() {
	w.once.Do(func() {
		close(w.quit)
		<-w.done
		if w.set != nil {
			w.release()
		}
	})
}

func (w *XIDWatch) release() {
	w.set.Free()
	w.lib.Shutdown()
}
