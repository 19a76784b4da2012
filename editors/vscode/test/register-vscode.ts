/** Imported first by tests that load the extension or vscode-languageclient: installs the vscode stub. */
import { install } from "./vscode-stub";

install();
