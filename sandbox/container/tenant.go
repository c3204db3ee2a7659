package container

import (
	"fmt"
	"hash/fnv"
	"regexp"
)

// Host uid/gid ranges. Every tenant's container root maps to its own block
// of RangeSize ids on the host, starting at FirstHostID and never
// overlapping another tenant's block:
//
//	slot(tenant) = fnv32a(tenant) mod Slots
//	host ids     = FirstHostID + slot*RangeSize ... + RangeSize-1
//
// Two tenant names that hash to the same slot in one Runtime are refused
// (Runtime.TenantRange reports which); a tenant can then be renamed.
const (
	FirstHostID = 1 << 20 // 1048576: above the ranges /etc/subuid usually hands out
	RangeSize   = 1 << 16 // container ids 0..65535
	Slots       = 16000   // up to host id 1048576 + 16000*65536 < 2^31
)

// tenantSlot is the tenant's slot, before collision checks.
func tenantSlot(tenant string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(tenant))
	return h.Sum32() % Slots
}

// HostID is the first host uid (and gid) of tenant's range, before
// collision checks.
func HostID(tenant string) uint32 {
	return FirstHostID + tenantSlot(tenant)*RangeSize
}

var cgroupSafe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// cgroupName is a name safe as one cgroup path element: the tenant name
// itself when it is plain, else a hash of it.
func cgroupName(tenant string) string {
	if cgroupSafe.MatchString(tenant) && tenant != "." && tenant != ".." {
		return tenant
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(tenant))
	return fmt.Sprintf("t-%016x", h.Sum64())
}
