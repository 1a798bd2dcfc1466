//go:build !linux

package launcher

import "time"

// StartService returns ErrUnsupported: a service that dies with the
// launcher needs Linux's parent-death signal.
func StartService(spec ServiceSpec) (*Service, error) { return nil, ErrUnsupported }

// Stop does nothing off Linux: no service starts there.
func (s *Service) Stop(grace time.Duration) {}
