// Builds ProseMirror-JSON-like nodes into a Y.XmlFragment the way y-prosemirror stores them:
// each node an Y.XmlElement named after its type with the node attributes, consecutive text
// nodes one Y.XmlText whose formatting attributes are the marks ({markType: attrs or {}}).
// Shared by yclient.mjs (the `xml_build` command) and the Python tests' node scripts.

import * as Y from 'yjs'

const checkNode = (node) => {
  if (node === null || typeof node !== 'object' || typeof node.type !== 'string') {
    throw new TypeError('each node must be an object with a string "type"')
  }
  if (node.type === 'text' && typeof node.text !== 'string') {
    throw new TypeError('a text node needs a string "text"')
  }
}

const markAttributes = (marks) => {
  const attributes = {}
  for (const mark of marks ?? []) {
    if (mark === null || typeof mark !== 'object' || typeof mark.type !== 'string') {
      throw new TypeError('each mark must be an object with a string "type"')
    }
    attributes[mark.type] = mark.attrs ?? {}
  }
  return attributes
}

// Appends `nodes` to `parent` (a Y.XmlFragment or Y.XmlElement already in a document).
const appendNodes = (parent, nodes) => {
  let text = null
  for (const node of nodes) {
    checkNode(node)
    if (node.type === 'text') {
      if (text === null) {
        text = new Y.XmlText()
        parent.insert(parent.length, [text])
      }
      // Yjs clears formatting not named in `attributes`, so each run keeps only its marks.
      if (node.text.length > 0) text.insert(text.length, node.text, markAttributes(node.marks))
      continue
    }
    text = null
    const element = new Y.XmlElement(node.type)
    parent.insert(parent.length, [element])
    for (const [key, value] of Object.entries(node.attrs ?? {})) {
      if (value !== null && value !== undefined) element.setAttribute(key, value)
    }
    appendNodes(element, node.content ?? [])
  }
}

// Appends `nodes` to root fragment `name` of `doc` (keeping what is there), in one transaction.
export const buildXml = (doc, name, nodes) => {
  if (!Array.isArray(nodes)) throw new TypeError('"nodes" must be an array')
  const fragment = doc.getXmlFragment(name)
  doc.transact(() => appendNodes(fragment, nodes))
  return fragment
}
