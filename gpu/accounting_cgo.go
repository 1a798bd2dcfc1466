//go:build linux && cgo

package gpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// PeakGPUMemory returns, for each of pids, the GPU memory it used at its
// peak on the GPUs with the given UUIDs (summed over those GPUs), from
// NVML's accounting statistics, which the driver keeps for processes that
// have exited. A pid that used no GPU is left out. Accounting is a GPU
// setting (nvidia-smi -am 1); notes say, one line each with no package
// prefix, on which GPUs it is off. With no UUIDs nothing is loaded.
func PeakGPUMemory(uuids []string, pids []int) (map[int]int64, []string, error) {
	return peakGPUMemory(newNVML(), uuids, pids)
}

func peakGPUMemory(lib NVML, uuids []string, pids []int) (map[int]int64, []string, error) {
	peaks := map[int]int64{}
	if len(uuids) == 0 {
		return peaks, nil, nil
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, nil, &NVMLError{Op: "init", GPU: -1, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
	}
	defer lib.Shutdown()
	var notes []string
	for _, uuid := range uuids {
		d, ret := lib.DeviceGetHandleByUUID(uuid)
		if ret != nvml.SUCCESS {
			notes = append(notes, fmt.Sprintf("GPU %s: no GPU memory figures: %v", uuid, ret))
			continue
		}
		if mode, ret := d.GetAccountingMode(); ret != nvml.SUCCESS || mode != nvml.FEATURE_ENABLED {
			index, _ := d.GetIndex()
			notes = append(notes, fmt.Sprintf("GPU %d (%s): accounting mode is off, so no per-rank GPU memory (nvidia-smi -am 1 turns it on)", index, uuid))
			continue
		}
		for _, pid := range pids {
			st, ret := d.GetAccountingStats(uint32(pid))
			if ret == nvml.SUCCESS && st.MaxMemoryUsage > 0 {
				peaks[pid] += int64(st.MaxMemoryUsage)
			}
		}
	}
	return peaks, notes, nil
}
