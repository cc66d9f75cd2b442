// Validates prometheus-operator objects (a JSON array on stdin) against the operator's CRD
// schemas, as generated into @kubernetes-models/prometheus-operator.  Prints one line per
// object; exits 1 if any is invalid.
import { readFileSync } from "node:fs";

const docs = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const doc of docs) {
  const [group, version] = doc.apiVersion.split("/");
  const mod = await import(`@kubernetes-models/prometheus-operator/${group}/${version}/${doc.kind}`);
  try {
    new mod[doc.kind](doc).validate();
    console.log(`ok ${doc.kind} ${doc.metadata.name}`);
  } catch (e) {
    bad++;
    console.log(`INVALID ${doc.kind} ${doc.metadata?.name}: ${e.message}`);
  }
}
process.exit(bad ? 1 : 0);
