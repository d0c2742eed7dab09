//go:build !wasm

package realm

import "unsafe"

// Outside WebAssembly there is no host: every call fails with ErrUnsupported, so that the
// package still builds (and tenant code can be type-checked) on any platform.

const unsupported = -int64(ErrUnsupported)

func hostGenerate(unsafe.Pointer, uint32) int64                             { return unsupported }
func hostGenerateStream(unsafe.Pointer, uint32) int64                       { return unsupported }
func hostEncodeTokens(unsafe.Pointer, uint32, unsafe.Pointer, uint32) int64 { return unsupported }
func hostDecodeTokens(unsafe.Pointer, uint32, unsafe.Pointer, uint32) int64 { return unsupported }
func hostLoadModelByName(unsafe.Pointer, uint32) int64                      { return unsupported }
func hostGetModelVersion(unsafe.Pointer, uint32) int64                      { return unsupported }
func hostInput() int64                                                      { return unsupported }
func hostEmit(unsafe.Pointer, uint32) int32                                 { return int32(unsupported) }
func hostLog(int32, unsafe.Pointer, uint32) int32                           { return int32(unsupported) }
func hostResultRead(unsafe.Pointer, uint32) int32                           { return int32(unsupported) }
func hostConversationCreate(unsafe.Pointer, uint32) int64                   { return unsupported }
func hostConversationGet(unsafe.Pointer, uint32) int64                      { return unsupported }
func hostConversationPut(unsafe.Pointer, uint32) int64                      { return unsupported }
func hostConversationDelete(unsafe.Pointer, uint32) int32                   { return int32(unsupported) }
func hostGenerateWith(unsafe.Pointer, uint32) int64                         { return unsupported }
func hostSamplerDecide(unsafe.Pointer, uint32) int32                        { return int32(unsupported) }
func hostHTTPFetch(unsafe.Pointer, uint32) int64                            { return unsupported }
func hostMCPListTools(unsafe.Pointer, uint32) int64                         { return unsupported }
func hostMCPCallTool(unsafe.Pointer, uint32) int64                          { return unsupported }
func hostEmbed(unsafe.Pointer, uint32) int64                                { return unsupported }
func hostCollectionCreate(unsafe.Pointer, uint32) int64                     { return unsupported }
func hostCollectionList() int64                                             { return unsupported }
func hostCollectionDelete(unsafe.Pointer, uint32) int32                     { return int32(unsupported) }
func hostCollectionAddTexts(unsafe.Pointer, uint32) int64                   { return unsupported }
func hostCollectionSearch(unsafe.Pointer, uint32) int64                     { return unsupported }
func hostPipelineRun(unsafe.Pointer, uint32) int64                          { return unsupported }
