// Creates a blob container on Azurite: `node create-container.mjs http://127.0.0.1:PORT NAME`.
// Container creation needs a Shared Key signature (Azurite checks it as Azure does); this signs
// the one request with the emulator's well-known development account (public, documented by
// Azure), so the tests need no Azure SDK. Exit 0 once the container exists.
import { createHmac } from "node:crypto";

const ACCOUNT = "devstoreaccount1";
const KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const [endpoint, name] = process.argv.slice(2);
if (!endpoint || !name) {
  console.error("usage: node create-container.mjs ENDPOINT NAME");
  process.exit(2);
}
const date = new Date().toUTCString();
const version = "2021-08-06";
const toSign = [
  "PUT", "", "", "", "", "", "", "", "", "", "", "",
  `x-ms-date:${date}\nx-ms-version:${version}`,
  `/${ACCOUNT}/${ACCOUNT}/${name}\nrestype:container`,
].join("\n");
const signature = createHmac("sha256", Buffer.from(KEY, "base64")).update(toSign, "utf8").digest("base64");
const response = await fetch(`${endpoint}/${ACCOUNT}/${name}?restype=container`, {
  method: "PUT",
  headers: {
    "x-ms-date": date,
    "x-ms-version": version,
    authorization: `SharedKey ${ACCOUNT}:${signature}`,
    "content-length": "0",
  },
});
if (response.status !== 201 && response.status !== 409) {
  console.error(`creating container ${name} on ${endpoint}: ${response.status} ${await response.text()}`);
  process.exit(1);
}
