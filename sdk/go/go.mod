module realm.dev/sdk/go

go 1.24
