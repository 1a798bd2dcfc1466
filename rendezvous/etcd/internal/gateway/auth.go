package gateway

import "context"

// The permissions of RoleGrantPermission.
const (
	PermRead      = "READ"
	PermReadWrite = "READWRITE"
)

// UserAdd adds user name with password.
func (c *Client) UserAdd(ctx context.Context, name, password string) error {
	in := struct {
		Name     string `json:"name"`
		Password string `json:"password"`
	}{name, password}
	return c.call(ctx, "/v3/auth/user/add", in, &struct{}{})
}

// UserGrantRole gives user role.
func (c *Client) UserGrantRole(ctx context.Context, user, role string) error {
	in := struct {
		User string `json:"user"`
		Role string `json:"role"`
	}{user, role}
	return c.call(ctx, "/v3/auth/user/grant", in, &struct{}{})
}

// RoleAdd adds role name.
func (c *Client) RoleAdd(ctx context.Context, name string) error {
	in := struct {
		Name string `json:"name"`
	}{name}
	return c.call(ctx, "/v3/auth/role/add", in, &struct{}{})
}

// RoleGrantPermission lets role do perm (PermRead or PermReadWrite) on
// key, or on the keys from key up to end.
func (c *Client) RoleGrantPermission(ctx context.Context, role, key, end, perm string) error {
	type permission struct {
		PermType string `json:"permType"`
		Key      []byte `json:"key"`
		RangeEnd []byte `json:"range_end,omitempty"`
	}
	in := struct {
		Name string     `json:"name"`
		Perm permission `json:"perm"`
	}{role, permission{PermType: perm, Key: []byte(key)}}
	if end != "" {
		in.Perm.RangeEnd = []byte(end)
	}
	return c.call(ctx, "/v3/auth/role/grant", in, &struct{}{})
}

// AuthEnable turns authentication on (user root must exist).
func (c *Client) AuthEnable(ctx context.Context) error {
	return c.call(ctx, "/v3/auth/enable", struct{}{}, &struct{}{})
}
