package osutil

import (
	"errors"
	"syscall"
)

// Cause returns the errno at the bottom of err (an *os.PathError,
// *net.OpError or *os.SyscallError chain), so that a message which already
// names the path or address says "no such file or directory" once; err
// itself when it holds no errno. The errno still matches errors.Is
// (fs.ErrNotExist, …).
func Cause(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}
