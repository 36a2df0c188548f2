// The CNCF distribution registry as its cmd/registry builds it, with the drivers the local
// cluster configures: filesystem storage (and inmemory) and htpasswd authentication. The cloud
// storage drivers and middlewares upstream links in (Azure, GCS, S3, CloudFront) are left out:
// nothing here uses them, and their SDKs were most of the build.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
