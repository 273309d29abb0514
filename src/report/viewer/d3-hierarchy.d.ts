/**
 * The part of d3-hierarchy's API the viewer uses. The library is inlined into the report as a classic
 * script (its dist/d3-hierarchy.min.js), which defines the global `d3`.
 */
declare namespace d3 {
  interface HierarchyNode<T> {
    data: T;
    depth: number;
    parent: HierarchyNode<T> | null;
    children?: Array<HierarchyNode<T>>;
    each(fn: (node: this) => void): this;
    links(): Array<{ source: HierarchyPointNode<T>; target: HierarchyPointNode<T> }>;
  }
  interface HierarchyPointNode<T> extends HierarchyNode<T> {
    /** Breadth (across the depth axis). */
    x: number;
    /** Depth axis. */
    y: number;
  }
  interface StratifyOperator<T> {
    id(fn: (d: T) => string): this;
    parentId(fn: (d: T) => string | null | undefined): this;
    (data: readonly T[]): HierarchyNode<T>;
  }
  interface TreeLayout {
    nodeSize(size: [number, number]): this;
    separation(fn: (a: HierarchyNode<unknown>, b: HierarchyNode<unknown>) => number): this;
    <T>(root: HierarchyNode<T>): HierarchyPointNode<T>;
  }
  function stratify<T>(): StratifyOperator<T>;
  function tree(): TreeLayout;
}
