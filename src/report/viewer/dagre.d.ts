/**
 * The part of @dagrejs/dagre's API the viewer uses. The library is inlined into the report as a
 * classic script (its dist/dagre.min.js), which defines the global `dagre`.
 */
declare namespace dagre {
  interface NodeLabel {
    width: number;
    height: number;
    x?: number;
    y?: number;
  }
  interface EdgeLabel {
    points?: Array<{ x: number; y: number }>;
  }
  interface GraphLabel {
    rankdir?: "TB" | "BT" | "LR" | "RL";
    nodesep?: number;
    ranksep?: number;
    marginx?: number;
    marginy?: number;
    ranker?: "network-simplex" | "tight-tree" | "longest-path";
    width?: number;
    height?: number;
  }
  namespace graphlib {
    class Graph {
      constructor(opts?: { directed?: boolean; multigraph?: boolean; compound?: boolean });
      setGraph(label: GraphLabel): this;
      graph(): GraphLabel;
      setDefaultEdgeLabel(fn: () => EdgeLabel): this;
      setNode(id: string, label: NodeLabel): this;
      node(id: string): NodeLabel;
      setEdge(v: string, w: string): this;
      edges(): Array<{ v: string; w: string }>;
      edge(e: { v: string; w: string }): EdgeLabel;
    }
  }
  function layout(g: graphlib.Graph, opts?: { disableOptimalOrderHeuristic?: boolean }): void;
}
